# A CPU image of the visionsearch server: the server, its models and photo sets, and nothing to build with
# (the build stage compiles the exact kernel's C score tiles, kernels/native/scores.c, with gcc).
#   docker build -t visionsearch .
#   docker run -v $PWD/secrets:/run/secrets:ro -v visionsearch-data:/data -p 50051:50051 -p 9090:9090 visionsearch
# ./secrets holds tls.crt, tls.key and api-keys.json (README, "Deploying"); without them the container refuses
# to start and says how to fix it. The first start embeds the default collection into /data (a few minutes
# on two cores); later starts reuse it.

# ---- build: a virtual environment with the server installed (not editable), no dev tools or extras
FROM python:3.11-slim-bookworm AS build
# An extra package index for torch can be passed to get a CPU-only build and a much smaller image.
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL} \
    PIP_NO_CACHE_DIR=1 \
    VISIONSEARCH_VENV=/opt/venv \
    VISIONSEARCH_PRODUCTION=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends dataset-fashion-mnist tuxpaint-stamps-default wordnet-base \
    gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN scripts/setup.sh

# ---- run: the environment and the photo sets only
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends dataset-fashion-mnist tuxpaint-stamps-default wordnet-base \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home /data visionsearch \
 && mkdir -p /data && chown visionsearch /data
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker-entrypoint.sh /usr/local/bin/visionsearch-entrypoint
ENV PYTHONUNBUFFERED=1 \
    VISIONSEARCH_ADDRESS=0.0.0.0:50051 \
    VISIONSEARCH_METRICS_ADDRESS=0.0.0.0:9090 \
    VISIONSEARCH_DATA_DIR=/data
USER visionsearch
WORKDIR /data
VOLUME /data
EXPOSE 50051 9090
# The metrics port answers once the server has started (gRPC health needs the server's TLS roots).
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s CMD ["/opt/venv/bin/python", "-c", \
  "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/metrics', timeout=3)"]
# SIGTERM (docker stop) drains in-flight calls and snapshots every collection before exiting; SIGHUP reloads keys.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/visionsearch-entrypoint"]
