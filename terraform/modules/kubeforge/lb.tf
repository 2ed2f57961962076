# A network load balancer: its TLS listener ends the API's TLS with the
# given certificate and opens a new TLS connection to each instance
# (which serves a certificate of its own, made at boot); the externalgrpc
# endpoint is passed through as TCP, because its mTLS client certificate
# must reach the service itself.

resource "aws_lb" "this" {
  name_prefix        = substr(var.name, 0, 6)
  load_balancer_type = "network"
  internal           = var.internal
  subnets            = var.load_balancer_subnet_ids
  security_groups    = [aws_security_group.lb.id]
  tags               = local.tags

  enable_cross_zone_load_balancing = true
}

resource "aws_lb_target_group" "api" {
  name_prefix = substr(var.name, 0, 6)
  port        = 8443
  protocol    = "TLS"
  vpc_id      = var.vpc_id
  target_type = "instance"
  tags        = local.tags

  health_check {
    protocol            = "HTTPS"
    path                = "/readyz"
    port                = "traffic-port"
    healthy_threshold   = 2
    unhealthy_threshold = 2
    interval            = 10
  }

  deregistration_delay = 30
}

resource "aws_lb_listener" "api" {
  load_balancer_arn = aws_lb.this.arn
  port              = 443
  protocol          = "TLS"
  certificate_arn   = var.certificate_arn
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  tags              = local.tags

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.api.arn
  }
}

resource "aws_lb_target_group" "grpc" {
  count       = local.grpc_enabled ? 1 : 0
  name_prefix = substr(var.name, 0, 6)
  port        = var.grpc_port
  protocol    = "TCP"
  vpc_id      = var.vpc_id
  target_type = "instance"
  tags        = local.tags

  health_check {
    protocol = "TCP"
    port     = "traffic-port"
  }

  deregistration_delay = 30
}

resource "aws_lb_listener" "grpc" {
  count             = local.grpc_enabled ? 1 : 0
  load_balancer_arn = aws_lb.this.arn
  port              = var.grpc_port
  protocol          = "TCP"
  tags              = local.tags

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.grpc[0].arn
  }
}
