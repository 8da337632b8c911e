# A CPU image of the visionsearch server, installed the way the README's `make serve` does.
#   docker build -t visionsearch .
#   docker run -p 50051:50051 -v visionsearch-data:/data visionsearch
# The first start embeds the default collection into /data (a few minutes on two cores); later starts reuse it.
FROM python:3.11-slim-bookworm

# An extra package index for torch can be passed to get a CPU-only build and a much smaller image.
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL} \
    PIP_NO_CACHE_DIR=1 \
    VISIONSEARCH_VENV=/opt/venv \
    PYTHONUNBUFFERED=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends make dataset-fashion-mnist tuxpaint-stamps-default wordnet-base \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY . .
RUN make install VENV=/opt/venv

ENV VISIONSEARCH_ADDRESS=0.0.0.0:50051 \
    VISIONSEARCH_DATA_DIR=/data
VOLUME /data
EXPOSE 50051
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s CMD ["/opt/venv/bin/python", "-c", \
  "import sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; ch = grpc.insecure_channel('127.0.0.1:50051'); sys.exit(g.HealthStub(ch).Check(h.HealthCheckRequest(), timeout=3).status != h.HealthCheckResponse.SERVING)"]
# SIGTERM (docker stop) drains in-flight calls and snapshots every collection before exiting.
STOPSIGNAL SIGTERM
CMD ["/opt/venv/bin/python", "-m", "server"]
