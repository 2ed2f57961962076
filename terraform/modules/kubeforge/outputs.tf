output "api_url" {
  description = "The API's base URL (KUBEFORGE_URL)."
  value       = "https://${local.public_host}"
}

output "grpc_address" {
  description = "host:port of the cluster-autoscaler externalgrpc endpoint (null when grpc_ingress_cidrs is empty)."
  value       = local.grpc_enabled ? "${local.public_host}:${var.grpc_port}" : null
}

output "load_balancer_dns_name" {
  description = "The load balancer's DNS name (point api_hostname at it)."
  value       = aws_lb.this.dns_name
}

output "load_balancer_zone_id" {
  description = "The load balancer's hosted zone, for an alias record."
  value       = aws_lb.this.zone_id
}

output "database_endpoint" {
  description = "host:port of the PostgreSQL database."
  value       = aws_db_instance.this.endpoint
}

output "database_secret_arn" {
  description = "The Secrets Manager secret RDS keeps the database's user and password in."
  value       = aws_db_instance.this.master_user_secret[0].secret_arn
}

output "role_arn" {
  description = "The service instances' IAM role (what tenants' role trust policies name)."
  value       = aws_iam_role.service.arn
}

output "token_key_secret_arn" {
  description = "The token signing key's secret: mint admin tokens with it (README, \"Running against your own PostgreSQL\")."
  value       = aws_secretsmanager_secret.token_key.arn
}

output "security_group_id" {
  description = "The service instances' security group."
  value       = aws_security_group.service.id
}

output "log_group_name" {
  description = "The CloudWatch log group of the service's logs."
  value       = aws_cloudwatch_log_group.this.name
}

output "account_id" {
  description = "The AWS account the service runs in."
  value       = data.aws_caller_identity.current.account_id
}
