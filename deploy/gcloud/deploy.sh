#!/usr/bin/env bash
# Deploy every handler in main.py as its own Google Cloud Function (2nd gen), and a
# Cloud Scheduler job that calls /drain every minute.
#
#   PROJECT=my-project REGION=europe-west1 MULTIMSG_DRAIN_TOKEN=$(openssl rand -hex 24) \
#       deploy/gcloud/deploy.sh                          # from the repository root
#
#   ... MULTIMSG_BACKEND=redis://:AUTH@10.0.0.3:6379/0 MULTIMSG_BLOBS=s3://BUCKET/multimsg \
#       VPC_FLAGS="--network=default --subnet=default --vpc-egress=private-ranges-only" deploy/gcloud/deploy.sh
#
# READ deploy/gcloud/README.md FIRST: without MULTIMSG_BACKEND (the embedded store under
# MULTIMSG_HOME) these functions do NOT share their data, so they do not make one working
# gateway. With it (Memorystore) they share the queue and, with MULTIMSG_BLOBS on Cloud
# Storage or in Redis, the uploads, and, sealed with MULTIMSG_KEY_SEAL (a Secret Manager secret,
# KEY_SEAL_SECRET, default multimsg-key-seal), the server key pairs and client tokens.
set -euo pipefail

: "${PROJECT:?set PROJECT}" "${REGION:?set REGION}" "${MULTIMSG_DRAIN_TOKEN:?set MULTIMSG_DRAIN_TOKEN}"
HANDLERS=(key data msg cons drain health metrics openapi)
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT

# The function source: main.py at the top, the multimsg package, and a
# requirements.txt made from pyproject.toml's runtime dependencies.
cp "$ROOT/main.py" "$STAGE/"
cp -r "$ROOT/multimsg" "$STAGE/"
find "$STAGE" -name __pycache__ -prune -exec rm -rf {} +
python3 - "$ROOT/pyproject.toml" > "$STAGE/requirements.txt" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
extras = project["optional-dependencies"]
print("\n".join(dict.fromkeys(project["dependencies"] + extras["redis"] + extras["s3"])))
PY

# Settings every function gets. /tmp is the only writable folder in Cloud
# Functions, and it is memory of that one instance (see the README).
cat > "$STAGE/env.yaml" <<YAML
MULTIMSG_HOME: /tmp/multimsg
MULTIMSG_IDENTITY: token
MULTIMSG_DRAIN_INTERVAL: "0"
MULTIMSG_DRAIN_TOKEN: "${MULTIMSG_DRAIN_TOKEN}"
MULTIMSG_LOG_FORMAT: json
MULTIMSG_DRAIN_LOCK: "off"
YAML
if [ -n "${MULTIMSG_BACKEND:-}" ]; then
  cat >> "$STAGE/env.yaml" <<YAML
MULTIMSG_BACKEND: "${MULTIMSG_BACKEND}"
MULTIMSG_BLOBS: "${MULTIMSG_BLOBS:-}"
MULTIMSG_S3_ENDPOINT_URL: "${MULTIMSG_S3_ENDPOINT_URL:-https://storage.googleapis.com}"
AWS_REGION: "auto"
YAML
  sed -i 's/^MULTIMSG_IDENTITY: token$/MULTIMSG_IDENTITY: ip\nMULTIMSG_TRUST_PROXY: "1"/' "$STAGE/env.yaml"
  # Every function must open the same sealed key pairs: the seal comes from Secret Manager
  SECRET_FLAGS="--set-secrets=MULTIMSG_KEY_SEAL=${KEY_SEAL_SECRET:-multimsg-key-seal}:latest"
else
  echo "deploy.sh: MULTIMSG_BACKEND is not set: these functions will not share a queue (see deploy/gcloud/README.md)" >&2
fi
# Platform credentials belong in Secret Manager, e.g.
#   --set-secrets=MULTIMSG_TELEGRAM_TOKEN=multimsg-telegram-token:latest

for handler in "${HANDLERS[@]}"; do
  gcloud functions deploy "multimsg-${handler}" \
    --project="$PROJECT" --region="$REGION" --gen2 --runtime=python311 \
    --source="$STAGE" --entry-point="$handler" --trigger-http --allow-unauthenticated \
    --env-vars-file="$STAGE/env.yaml" --memory=512Mi --timeout=540s ${VPC_FLAGS:-} ${SECRET_FLAGS:-}
done

# The drain, every minute. The function is public (multimsg checks the bearer
# MULTIMSG_DRAIN_TOKEN itself: Google's IAM token would take the same header).
DRAIN_URL=$(gcloud functions describe multimsg-drain --project="$PROJECT" --region="$REGION" --gen2 \
  --format='value(serviceConfig.uri)')
gcloud scheduler jobs create http multimsg-drain \
  --project="$PROJECT" --location="$REGION" --schedule="* * * * *" \
  --uri="$DRAIN_URL" --http-method=POST --attempt-deadline=540s \
  --headers="Authorization=Bearer ${MULTIMSG_DRAIN_TOKEN}"
