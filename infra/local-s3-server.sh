#!/usr/bin/env bash
# Start a local S3-compatible server (moto_server) on loopback for trying segpipe against s3:// URLs.
# Usage: infra/local-s3-server.sh [PORT]   (stop it with Ctrl-C)
# Then, in another shell, export the printed variables and use s3:// URLs, e.g.:
#   segpipe sample-data --output s3://samples/shards && segpipe segment --input s3://samples/shards ...
set -euo pipefail
port="${1:-5055}"
here="$(cd "$(dirname "$0")/.." && pwd)"
server="$here/.venv/bin/moto_server"
[ -x "$server" ] || server="$(command -v moto_server)" || { echo "moto_server not found: pip install 'moto[server]'" >&2; exit 1; }
cat <<MSG
S3 server on http://127.0.0.1:$port (fake credentials). In another shell:
  export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1
  python -c "import s3fs; s3fs.S3FileSystem().mkdir('samples')"
MSG
exec "$server" -H 127.0.0.1 -p "$port"
