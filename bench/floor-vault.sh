#!/usr/bin/env bash
# The curl floor for Vault / OpenBao: one `curl --parallel --parallel-immediate` reading every KV v2
# secret with the token, each answer written to a file.
#   bench/floor-vault.sh VAULT_URL TOKEN_FILE PATHS_FILE OUT_DIR
# PATHS_FILE: one API path per line (`secret/data/app/db`). Fails if any request fails.
set -euo pipefail
vault=$1 token_file=$2 paths=$3 out=$4
token=$(<"$token_file")
i=0
while IFS= read -r p; do
  [ $i = 0 ] || echo next
  printf 'url = "%s/v1/%s"\nheader = "X-Vault-Token: %s"\noutput = "%s/%d"\n' "$vault" "$p" "$token" "$out" "$i"
  i=$((i + 1))
done < "$paths" > "$out/curl.cfg"
curl --parallel --parallel-immediate -sS --fail -K "$out/curl.cfg"
