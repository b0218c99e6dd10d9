# omnirec gRPC service: `docker build -t omnirec .` then
#   docker run -p 50051:50051 -v $PWD/var:/app/var -e OMNIREC_CONFIG=/app/var/omnirec.toml omnirec
# The image holds code and generated stubs only; model bundles, data and the config (API keys) are mounted.

FROM python:3.12-slim AS build
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends make g++ && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml Makefile README.md ./
COPY domain domain
COPY simulator simulator
COPY training training
COPY feature_store feature_store
COPY service service
COPY offers offers
COPY omnirec omnirec
COPY protos protos
# Dependencies first, then `make protos` (the stamp says the venv is ready), then the package itself
# with the generated omnirec/v1 stubs (not editable: the runtime stage copies only the venv).
RUN python -m venv /app/.venv \
 && /app/.venv/bin/pip install --no-cache-dir . \
 && touch /app/.venv/.installed-stamp \
 && make protos \
 && /app/.venv/bin/pip install --no-cache-dir --no-deps --force-reinstall .

FROM python:3.12-slim
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 omnirec
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
# The default offer catalogue path (offers.catalogue_path) is relative to the working directory.
COPY --from=build /app/offers/examples /app/offers/examples
RUN mkdir -p /app/var && chown omnirec /app/var
USER omnirec
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1
EXPOSE 50051
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-m", "service.health_probe", "127.0.0.1:50051"]
STOPSIGNAL SIGTERM
CMD ["omnirec", "serve"]
