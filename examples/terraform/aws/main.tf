# Kubernetes workers on Flatcar in an Auto Scaling group, gated by bootsecrets: the instance role
# may read the workers' secrets and nothing else, IMDSv2 is required with a hop limit of 1, and
# the user data (rendered from Butane by the poseidon/ct provider) names secrets, never holds one.
#
#   bootsecrets render butane --variant flatcar --manifest manifest.toml --refresh \
#       --binary-url "s3://BUCKET/bootsecrets/VERSION/bootsecrets" --binary-sha512 HEX > bootsecrets.bu
#   terraform init && terraform apply
#
# A change of manifest or release is a new launch template version, rolled out by the group's
# instance refresh; a rotated secret reaches running nodes through bootsecrets-refresh.timer.

terraform {
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
    ct = {
      source  = "poseidon/ct"
      version = "~> 0.13"
    }
  }
}

variable "region" {
  type    = string
  default = "eu-west-1"
}

variable "flatcar_ami" {
  description = "A Flatcar Container Linux stable AMI in the region"
  type        = string
}

variable "subnet_ids" {
  type = list(string)
}

variable "secret_arns" {
  description = "The Secrets Manager secrets the workers read (ARNs; a trailing -* matches the random suffix)"
  type        = list(string)
}

variable "kms_key_arn" {
  description = "The customer managed KMS key of the secrets, if any"
  type        = string
  default     = ""
}

variable "artifacts_bucket" {
  description = "The S3 bucket the bootsecrets binary is downloaded from (Ignition uses the instance role)"
  type        = string
}

provider "aws" {
  region = var.region
}

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "worker" {
  name               = "k8s-worker"
  assume_role_policy = data.aws_iam_policy_document.assume.json
}

data "aws_iam_policy_document" "worker_secrets" {
  statement {
    sid       = "ReadTheWorkersSecrets"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = var.secret_arns
  }

  statement {
    sid       = "FetchTheBootsecretsBinary"
    actions   = ["s3:GetObject"]
    resources = ["arn:aws:s3:::${var.artifacts_bucket}/bootsecrets/*"]
  }

  dynamic "statement" {
    for_each = var.kms_key_arn == "" ? [] : [var.kms_key_arn]
    content {
      sid       = "DecryptWithTheSecretsKey"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]
      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["secretsmanager.${var.region}.amazonaws.com"]
      }
    }
  }
}

resource "aws_iam_role_policy" "worker_secrets" {
  name   = "worker-secrets"
  role   = aws_iam_role.worker.id
  policy = data.aws_iam_policy_document.worker_secrets.json
}

resource "aws_iam_instance_profile" "worker" {
  name = "k8s-worker"
  role = aws_iam_role.worker.name
}

# The worker's Butane config, with bootsecrets' snippet merged in.
data "ct_config" "worker" {
  content  = file("${path.module}/worker.bu")
  strict   = true
  snippets = [file("${path.module}/bootsecrets.bu")]
}

resource "aws_launch_template" "worker" {
  name_prefix   = "k8s-worker-"
  image_id      = var.flatcar_ami
  instance_type = "m6i.large"
  user_data     = base64encode(data.ct_config.worker.rendered)

  iam_instance_profile {
    name = aws_iam_instance_profile.worker.name
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }
}

resource "aws_autoscaling_group" "workers" {
  name                = "k8s-workers"
  min_size            = 3
  max_size            = 10
  desired_capacity    = 3
  vpc_zone_identifier = var.subnet_ids

  launch_template {
    id      = aws_launch_template.worker.id
    version = aws_launch_template.worker.latest_version
  }

  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 90
    }
  }
}
