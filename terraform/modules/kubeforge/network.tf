# Three groups, each admitting only what the next one needs:
# clients -> load balancer -> service -> database, and service -> tenant
# machines (SSH and the API server port). Terraform drops the default
# allow-all egress of each group; every egress here is declared.

resource "aws_security_group" "lb" {
  name_prefix = "${var.name}-lb-"
  description = "Kubeforge load balancer"
  vpc_id      = var.vpc_id
  tags        = local.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group" "service" {
  name_prefix = "${var.name}-service-"
  description = "Kubeforge service instances"
  vpc_id      = var.vpc_id
  tags        = local.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group" "db" {
  name_prefix = "${var.name}-db-"
  description = "Kubeforge database"
  vpc_id      = var.vpc_id
  tags        = local.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "lb_api" {
  for_each          = toset(var.api_ingress_cidrs)
  security_group_id = aws_security_group.lb.id
  description       = "The API (TLS)"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_ingress_rule" "lb_grpc" {
  for_each          = toset(var.grpc_ingress_cidrs)
  security_group_id = aws_security_group.lb.id
  description       = "The externalgrpc endpoint (mTLS, passed through)"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = var.grpc_port
  to_port           = var.grpc_port
}

resource "aws_vpc_security_group_egress_rule" "lb_to_service_api" {
  security_group_id            = aws_security_group.lb.id
  description                  = "To the service's API listener"
  referenced_security_group_id = aws_security_group.service.id
  ip_protocol                  = "tcp"
  from_port                    = 8443
  to_port                      = 8443
}

resource "aws_vpc_security_group_egress_rule" "lb_to_service_grpc" {
  count                        = local.grpc_enabled ? 1 : 0
  security_group_id            = aws_security_group.lb.id
  description                  = "To the service's externalgrpc listener"
  referenced_security_group_id = aws_security_group.service.id
  ip_protocol                  = "tcp"
  from_port                    = var.grpc_port
  to_port                      = var.grpc_port
}

resource "aws_vpc_security_group_ingress_rule" "service_api" {
  security_group_id            = aws_security_group.service.id
  description                  = "The API, from the load balancer"
  referenced_security_group_id = aws_security_group.lb.id
  ip_protocol                  = "tcp"
  from_port                    = 8443
  to_port                      = 8443
}

resource "aws_vpc_security_group_ingress_rule" "service_grpc" {
  count                        = local.grpc_enabled ? 1 : 0
  security_group_id            = aws_security_group.service.id
  description                  = "The externalgrpc endpoint, from the load balancer"
  referenced_security_group_id = aws_security_group.lb.id
  ip_protocol                  = "tcp"
  from_port                    = var.grpc_port
  to_port                      = var.grpc_port
}

resource "aws_vpc_security_group_ingress_rule" "service_dns" {
  for_each = {
    for pair in setproduct(var.cluster_dns ? var.tenant_cidrs : [], ["tcp", "udp"]) : "${pair[0]} ${pair[1]}" => pair
  }
  security_group_id = aws_security_group.service.id
  description       = "Cluster DNS, from tenant machines"
  cidr_ipv4         = each.value[0]
  ip_protocol       = each.value[1]
  from_port         = 53
  to_port           = 53
}

resource "aws_vpc_security_group_egress_rule" "service_to_db" {
  security_group_id            = aws_security_group.service.id
  description                  = "To PostgreSQL"
  referenced_security_group_id = aws_security_group.db.id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
}

resource "aws_vpc_security_group_egress_rule" "service_to_tenant_ssh" {
  for_each          = toset(var.tenant_cidrs)
  security_group_id = aws_security_group.service.id
  description       = "SSH to tenant machines (bootstrap, repair)"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
}

resource "aws_vpc_security_group_egress_rule" "service_to_tenant_api" {
  for_each          = toset(var.tenant_cidrs)
  security_group_id = aws_security_group.service.id
  description       = "Tenant clusters' API servers"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 6443
  to_port           = 6443
}

resource "aws_vpc_security_group_egress_rule" "service_https" {
  security_group_id = aws_security_group.service.id
  description       = "AWS APIs (EC2, STS, Secrets Manager, CloudWatch Logs), through a NAT gateway or VPC endpoints"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_ingress_rule" "db_from_service" {
  security_group_id            = aws_security_group.db.id
  description                  = "PostgreSQL, from the service"
  referenced_security_group_id = aws_security_group.service.id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
}
