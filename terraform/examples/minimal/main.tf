# One kubeforge serve instance, a single-AZ database, the API on an
# internet-facing load balancer; no gRPC endpoint.

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
  description = "Two or more private subnets (with a NAT gateway or VPC endpoints) for the service and its database."
}

variable "public_subnet_ids" {
  type        = list(string)
  description = "Public subnets for the load balancer."
}

variable "certificate_arn" {
  type        = string
  description = "ACM certificate for the API."
}

variable "ami_id" {
  type        = string
  description = "The Kubeforge service image (terraform/README.md, \"The image\")."
}

variable "etcd_sha256" {
  type        = string
  description = "The sha256 of /usr/bin/etcd in the tenants' machine images."
}

variable "admin_cidrs" {
  type        = list(string)
  description = "Who may reach the API."
}

module "kubeforge" {
  source = "../../modules/kubeforge"

  name                     = "kubeforge"
  vpc_id                   = var.vpc_id
  service_subnet_ids       = var.private_subnet_ids
  load_balancer_subnet_ids = var.public_subnet_ids
  certificate_arn          = var.certificate_arn
  ami_id                   = var.ami_id
  etcd_sha256              = var.etcd_sha256
  api_ingress_cidrs        = var.admin_cidrs
  tenant_cidrs             = ["10.0.0.0/8"]

  # Easy to tear down while trying it out.
  db_deletion_protection = false
}

output "api_url" {
  description = "KUBEFORGE_URL."
  value       = module.kubeforge.api_url
}

output "token_key_secret_arn" {
  description = "Where the token signing key is, to mint the first admin token."
  value       = module.kubeforge.token_key_secret_arn
}
