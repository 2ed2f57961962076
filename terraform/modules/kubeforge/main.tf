locals {
  tags = merge(var.tags, { "kubeforge:deployment" = var.name })

  grpc_enabled = length(var.grpc_ingress_cidrs) > 0
  public_host  = coalesce(var.api_hostname, aws_lb.this.dns_name)

  # The service's own networks: clusters' security groups open SSH and
  # 6443 to these (kubeforge serve --aws-service-cidr).
  service_cidrs = [for s in data.aws_subnet.service : s.cidr_block]
}

data "aws_partition" "current" {}

data "aws_region" "current" {}

data "aws_caller_identity" "current" {}

data "aws_subnet" "service" {
  count = length(var.service_subnet_ids)
  id    = var.service_subnet_ids[count.index]
}
