#!/usr/bin/env bash
# What a unit built on the AWS CLI does: one `aws secretsmanager get-secret-value` per secret, each
# a new process taking the instance role's credentials from IMDSv2 (AWS_EC2_METADATA_SERVICE_ENDPOINT),
# the value written to a file.
#   bench/awscli-unit.sh AWS IDS_FILE OUT_DIR     (AWS: the aws executable)
# The endpoint and region come from the environment (AWS_ENDPOINT_URL, AWS_REGION).
set -euo pipefail
aws=$1 ids=$2 out=$3
i=0
while IFS= read -r id; do
  "$aws" secretsmanager get-secret-value --secret-id "$id" --query SecretString --output text > "$out/$i"
  i=$((i + 1))
done < "$ids"
