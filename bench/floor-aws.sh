#!/usr/bin/env bash
# The curl floor for Secrets Manager: what a shell unit with curl does at best. The three IMDSv2
# requests (session token, role name, role credentials), then one `curl --parallel
# --parallel-immediate` sending every GetSecretValue, SigV4-signed by curl itself, each answer
# written to a file.
#   bench/floor-aws.sh IMDS_URL SECRETS_MANAGER_URL REGION IDS_FILE OUT_DIR
# IDS_FILE: one secret id per line. Fails if any request fails.
set -euo pipefail
imds=$1 sm=$2 region=$3 ids=$4 out=$5

token=$(curl -sSf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' "$imds/latest/api/token")
role=$(curl -sSf -H "X-aws-ec2-metadata-token: $token" "$imds/latest/meta-data/iam/security-credentials/")
creds=$(curl -sSf -H "X-aws-ec2-metadata-token: $token" "$imds/latest/meta-data/iam/security-credentials/$role")
field() { [[ $creds =~ \"$1\"[[:space:]]*:[[:space:]]*\"([^\"]+)\" ]] && printf '%s' "${BASH_REMATCH[1]}"; }
key=$(field AccessKeyId) secret=$(field SecretAccessKey) session=$(field Token)

i=0
while IFS= read -r id; do
  [ $i = 0 ] || echo next
  printf 'url = "%s/"\nrequest = "POST"\naws-sigv4 = "aws:amz:%s:secretsmanager"\nuser = "%s:%s"\n' \
    "$sm" "$region" "$key" "$secret"
  printf 'header = "X-Amz-Target: secretsmanager.GetSecretValue"\nheader = "Content-Type: application/x-amz-json-1.1"\n'
  printf 'header = "X-Amz-Security-Token: %s"\ndata = "{\\"SecretId\\":\\"%s\\"}"\noutput = "%s/%d"\n' \
    "$session" "$id" "$out" "$i"
  i=$((i + 1))
done < "$ids" > "$out/curl.cfg"
curl --parallel --parallel-immediate -sS --fail -K "$out/curl.cfg"
