#!/usr/bin/env bash
# Render every shipped stack and the variants in tests/fixtures/render_variants into one
# folder per stack, so two checkouts can be compared byte for byte (a refactor that must not
# change what clusters receive):
#   scripts/render_variants.sh OUT            render this checkout into OUT/<stack>/
#   diff -r OUT_BEFORE OUT_AFTER              empty when nothing changed
set -euo pipefail
out=${1:?usage: scripts/render_variants.sh OUT}
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
variants=$root/tests/fixtures/render_variants
mkdir -p "$out"
cd "$root"
for stack in dev staging prod; do
  "$python" -m brokerctl render --stack "$stack" --out "$out/$stack" >/dev/null
done
for file in "$variants"/Pulumi.*.yaml; do
  stack=$(basename "$file" .yaml)
  stack=${stack#Pulumi.}
  "$python" -m brokerctl render --stack "$stack" --config-dir "$variants" \
    --out "$out/$stack" >/dev/null
done
echo "rendered $(find "$out" -name '*.yaml' | wc -l) objects into $out"
