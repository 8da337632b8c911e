#!/bin/sh
# Starts the server in the container. It listens on 0.0.0.0, so it needs TLS and API keys, taken from mounted
# files (Docker or Kubernetes secrets) at these paths unless the variables name others:
#   VISIONSEARCH_TLS_CERT  /run/secrets/tls.crt     the server's PEM certificate chain
#   VISIONSEARCH_TLS_KEY   /run/secrets/tls.key     its PEM private key
#   VISIONSEARCH_API_KEYS  /run/secrets/api-keys.json  the key file (visionsearch-admin keys add)
#   VISIONSEARCH_TLS_CLIENT_CA /run/secrets/client-ca.crt  optional: require client certificates (mTLS)
# Without them the server refuses to start and says so (or set VISIONSEARCH_INSECURE=true on a trusted network).
set -eu
pick() { # variable, default path: export the variable when the default file exists and it is unset
  eval "current=\${$1:-}"
  if [ -z "$current" ] && [ -e "$2" ]; then export "$1=$2"; fi
}
pick VISIONSEARCH_TLS_CERT /run/secrets/tls.crt
pick VISIONSEARCH_TLS_KEY /run/secrets/tls.key
pick VISIONSEARCH_API_KEYS /run/secrets/api-keys.json
pick VISIONSEARCH_TLS_CLIENT_CA /run/secrets/client-ca.crt
if [ -z "${VISIONSEARCH_TLS_CERT:-}" ] || [ -z "${VISIONSEARCH_API_KEYS:-}" ]; then
  case "${VISIONSEARCH_INSECURE:-}" in true|1|yes|on) ;; *)
    echo "visionsearch: no TLS certificate or API key file was mounted. Mount them, e.g." >&2
    echo "  docker run -v \$PWD/secrets:/run/secrets:ro -p 50051:50051 visionsearch" >&2
    echo "with tls.crt, tls.key and api-keys.json in ./secrets (see the README, Deploying)," >&2
    echo "or set VISIONSEARCH_INSECURE=true on a network you trust." >&2
    exit 2 ;;
  esac
fi
exec "${VISIONSEARCH_PYTHON:-/opt/venv/bin/python}" -m server "$@"
