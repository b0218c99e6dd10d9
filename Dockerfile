# omnirec gRPC service: `docker build -t omnirec .` then
#   docker run -p 50051:50051 -v $PWD/var:/app/var -e OMNIREC_CONFIG=/app/var/omnirec.toml omnirec
# The image holds code and generated stubs only; model bundles, data and the config (API keys) are mounted.

FROM python:3.12-slim AS build
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY protos protos
COPY omnirec omnirec
# setup.py generates the gRPC stubs from protos/ while the wheel is built.
RUN python -m venv /app/.venv && /app/.venv/bin/pip install --no-cache-dir .

FROM python:3.12-slim
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 omnirec
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
RUN mkdir -p /app/var && chown omnirec /app/var
USER omnirec
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1
EXPOSE 50051
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-m", "omnirec.service.health_probe", "127.0.0.1:50051"]
STOPSIGNAL SIGTERM
CMD ["omnirec", "serve"]
