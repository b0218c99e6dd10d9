"""Model settings are typed sections: a partial section keeps the other defaults, a misspelt key is an error."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from omnirec.config import OmnirecConfig
from omnirec.training.config import ALSSettings, BPRSettings, LightFMSettings


def load(tmp_path: Path, toml: str) -> OmnirecConfig:
    path = tmp_path / "omnirec.toml"
    path.write_text(toml)
    return OmnirecConfig.load(path, env={})


def test_a_partial_section_keeps_every_other_default(tmp_path: Path) -> None:
    config = load(tmp_path, "[train.lightfm]\nepochs = 5\n[train.als]\niterations = 4\n[train.bpr]\nfactors = 8\n")
    train = config.train
    assert train.lightfm == LightFMSettings(epochs=5)
    assert (train.lightfm.no_components, train.lightfm.loss, train.lightfm.learning_rate) == (32, "warp", 0.08)
    assert train.als == ALSSettings(iterations=4) and train.als.factors == 32 and train.als.alpha == 3.0
    assert train.bpr == BPRSettings(factors=8) and train.bpr.iterations == 100
    assert train.lightfm.kwargs() == {"no_components": 32, "loss": "warp", "learning_rate": 0.08,
                                      "item_alpha": 0.0, "user_alpha": 0.0, "epochs": 5, "num_threads": 1,
                                      "max_members": None}


@pytest.mark.parametrize(("toml", "where"), [
    ("[train.lightfm]\nepoch = 5\n", "train.lightfm.epoch"),
    ("[train.als]\nfactor = 8\n", "train.als.factor"),
    ("[train.bpr]\nlearning_rate = 0\n", "train.bpr.learning_rate"),
    ("[train.lightfm]\nloss = 'hinge'\n", "train.lightfm.loss"),
])
def test_a_bad_key_or_value_is_an_error_naming_it(tmp_path: Path, toml: str, where: str) -> None:
    with pytest.raises(ValidationError) as raised:
        load(tmp_path, toml)
    assert [".".join(map(str, e["loc"])) for e in raised.value.errors()] == [where]
