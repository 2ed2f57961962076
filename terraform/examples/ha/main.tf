# Three kubeforge serve instances across zones behind the load balancer, a
# multi-AZ database, a customer-managed KMS key, the externalgrpc endpoint
# for tenants' own cluster-autoscalers, and a DNS name for all of it.

terraform {
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.30"
    }
  }
}

provider "aws" {
  region = var.region
}

variable "region" {
  type        = string
  description = "AWS region to deploy into."
}

variable "vpc_id" {
  type        = string
  description = "The VPC."
}

variable "private_subnet_ids" {
  type        = list(string)
  description = "Private subnets in three availability zones."

  validation {
    condition     = length(var.private_subnet_ids) >= 3
    error_message = "private_subnet_ids must name three or more subnets (one per zone)."
  }
}

variable "public_subnet_ids" {
  type        = list(string)
  description = "Public subnets for the load balancer, in the same zones."
}

variable "zone_id" {
  type        = string
  description = "Route 53 hosted zone that holds hostname."
}

variable "hostname" {
  type        = string
  description = "DNS name of the API and gRPC endpoint (the certificate names it)."
}

variable "certificate_arn" {
  type        = string
  description = "ACM certificate for hostname."
}

variable "ami_id" {
  type        = string
  description = "The Kubeforge service image (terraform/README.md, \"The image\")."
}

variable "etcd_sha256" {
  type        = string
  description = "The sha256 of /usr/bin/etcd in the tenants' machine images."
}

variable "client_cidrs" {
  type        = list(string)
  description = "Who may reach the API."
}

variable "tenant_cidrs" {
  type        = list(string)
  description = "Networks of tenant clusters' instances (their autoscalers dial the gRPC endpoint from there too)."
}

variable "tenant_account_ids" {
  type        = list(string)
  description = "Accounts whose kubeforge-* roles the service may assume for clusters that name one."
}

data "aws_caller_identity" "current" {}

# The account's IAM policies decide who uses the key (the module grants
# the service's role Decrypt), and the auto-scaling service may use it for
# the instances' encrypted volumes: a service-linked role takes no IAM
# policy, so the key's own policy must name it.
data "aws_iam_policy_document" "key" {
  statement {
    sid       = "Account"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:aws:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }

  statement {
    sid = "AutoScalingVolumes"
    actions = [
      "kms:CreateGrant",
      "kms:Decrypt",
      "kms:DescribeKey",
      "kms:Encrypt",
      "kms:GenerateDataKey*",
      "kms:ReEncrypt*",
    ]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:aws:iam::${data.aws_caller_identity.current.account_id}:role/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling"]
    }
  }
}

resource "aws_kms_key" "kubeforge" {
  description         = "Kubeforge database, secrets and volumes"
  enable_key_rotation = true
  policy              = data.aws_iam_policy_document.key.json
}

module "kubeforge" {
  source = "../../modules/kubeforge"

  name                     = "kubeforge"
  vpc_id                   = var.vpc_id
  service_subnet_ids       = var.private_subnet_ids
  load_balancer_subnet_ids = var.public_subnet_ids
  certificate_arn          = var.certificate_arn
  api_hostname             = var.hostname
  ami_id                   = var.ami_id
  etcd_sha256              = var.etcd_sha256
  instance_type            = "m6i.large"
  api_ingress_cidrs        = var.client_cidrs
  grpc_ingress_cidrs       = var.tenant_cidrs
  tenant_cidrs             = var.tenant_cidrs
  tenant_role_arns         = [for a in var.tenant_account_ids : "arn:aws:iam::${a}:role/kubeforge-*"]
  kms_key_arn              = aws_kms_key.kubeforge.arn

  replicas = {
    min     = 3
    max     = 6
    desired = 3
  }

  db_instance_class        = "db.m6g.large"
  db_multi_az              = true
  db_backup_retention_days = 14
  log_retention_days       = 90
}

resource "aws_route53_record" "api" {
  zone_id = var.zone_id
  name    = var.hostname
  type    = "A"

  alias {
    name                   = module.kubeforge.load_balancer_dns_name
    zone_id                = module.kubeforge.load_balancer_zone_id
    evaluate_target_health = true
  }
}

output "api_url" {
  description = "KUBEFORGE_URL."
  value       = module.kubeforge.api_url
}

output "grpc_address" {
  description = "The externalgrpc endpoint the autoscaler credentials name."
  value       = module.kubeforge.grpc_address
}

output "database_endpoint" {
  description = "The database."
  value       = module.kubeforge.database_endpoint
}

output "role_arn" {
  description = "Name this in tenant roles' trust policies."
  value       = module.kubeforge.role_arn
}
