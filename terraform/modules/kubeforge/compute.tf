resource "aws_cloudwatch_log_group" "this" {
  name              = "/kubeforge/${var.name}"
  retention_in_days = var.log_retention_days
  tags              = local.tags
}

resource "aws_launch_template" "service" {
  name_prefix   = "${var.name}-"
  description   = "kubeforge serve"
  image_id      = var.ami_id
  instance_type = var.instance_type

  # Only ARNs and settings: the instance reads the keys and the database
  # password from Secrets Manager when the service starts.
  user_data = base64encode(templatefile("${path.module}/user-data.sh.tftpl", {
    region           = data.aws_region.current.name
    log_group        = aws_cloudwatch_log_group.this.name
    token_key_arn    = aws_secretsmanager_secret.token_key.arn
    secret_key_arn   = aws_secretsmanager_secret.secret_key.arn
    db_secret_arn    = aws_db_instance.this.master_user_secret[0].secret_arn
    db_address       = aws_db_instance.this.address
    db_port          = aws_db_instance.this.port
    db_name          = aws_db_instance.this.db_name
    workers          = var.workers
    etcd_sha256      = var.etcd_sha256
    public_host      = local.public_host
    dns_enabled      = var.cluster_dns
    grpc_enabled     = local.grpc_enabled
    grpc_port        = var.grpc_port
    service_cidrs    = local.service_cidrs
    tenant_api_cidrs = var.tenant_api_cidrs
  }))

  iam_instance_profile {
    arn = aws_iam_instance_profile.service.arn
  }

  vpc_security_group_ids = [aws_security_group.service.id]

  # The user-data names the secrets: IMDSv2 only, and one hop, so nothing
  # in a container on the instance reads it or the role's credentials.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  block_device_mappings {
    device_name = "/dev/xvda"

    ebs {
      volume_size           = 30
      volume_type           = "gp3"
      encrypted             = true
      kms_key_id            = var.kms_key_arn
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = "${var.name}-service" })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = local.tags
  }

  tags = local.tags
}

resource "aws_autoscaling_group" "service" {
  name_prefix         = "${var.name}-"
  vpc_zone_identifier = var.service_subnet_ids
  min_size            = var.replicas.min
  max_size            = var.replicas.max
  desired_capacity    = var.replicas.desired
  target_group_arns   = concat([aws_lb_target_group.api.arn], aws_lb_target_group.grpc[*].arn)

  # The load balancer routes by /readyz, which fails on every instance
  # while the database does not answer: replacing instances on it (ELB
  # health) would churn the whole group through a database outage.
  # systemd restarts a service that exits.
  health_check_type         = "EC2"
  health_check_grace_period = 300

  launch_template {
    id      = aws_launch_template.service.id
    version = aws_launch_template.service.latest_version
  }

  # A new launch template (a new image, new settings) replaces the
  # instances a few at a time; the others keep serving and the job queue
  # is shared, so work moves to the survivors.
  instance_refresh {
    strategy = "Rolling"

    preferences {
      min_healthy_percentage = 50
    }
  }

  dynamic "tag" {
    for_each = local.tags
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = false
    }
  }
}
