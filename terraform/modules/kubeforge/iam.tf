# The instances' role. Two policies:
# - "provider": what the `aws` provider calls, no more (the list is
#   `kubeforge aws required-actions`; tests/tests/terraform.rs holds this
#   document to it). Everything the service makes carries the
#   `kubeforge:cluster` tag, so actions on existing resources require it
#   (ec2:ResourceTag) and creations must set it (aws:RequestTag). The
#   Describe calls cannot be scoped (AWS takes no resource there). No
#   elbv2: an HA control plane is fronted by an instance running HAProxy
#   (docs/ARCHITECTURE.md, "The aws provider").
# - "instance": what the instance itself needs at boot and to ship logs.

locals {
  arn_prefix = "arn:${data.aws_partition.current.partition}:ec2:*:*"
  tagged     = "kubeforge:cluster"
}

data "aws_iam_policy_document" "assume_ec2" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "provider" {
  statement {
    sid = "Describe"
    actions = [
      "ec2:DescribeInstances",
      "ec2:DescribeSecurityGroups",
      "ec2:DescribeSubnets",
      "ec2:DescribeVolumes",
      "ec2:DescribeVpcs",
    ]
    resources = ["*"]
  }

  statement {
    sid     = "LaunchTaggedInstances"
    actions = ["ec2:RunInstances"]
    resources = [
      "${local.arn_prefix}:instance/*",
      "${local.arn_prefix}:volume/*",
    ]

    condition {
      test     = "Null"
      variable = "aws:RequestTag/${local.tagged}"
      values   = ["false"]
    }
  }

  statement {
    sid     = "LaunchIntoClusterGroups"
    actions = ["ec2:RunInstances"]
    resources = [
      "${local.arn_prefix}:security-group/*",
    ]

    condition {
      test     = "Null"
      variable = "ec2:ResourceTag/${local.tagged}"
      values   = ["false"]
    }
  }

  statement {
    sid     = "LaunchWith"
    actions = ["ec2:RunInstances"]
    resources = [
      "${local.arn_prefix}:subnet/*",
      "${local.arn_prefix}:network-interface/*",
      "arn:${data.aws_partition.current.partition}:ec2:*::image/*",
      "${local.arn_prefix}:key-pair/*",
    ]
  }

  statement {
    sid     = "TagOnCreate"
    actions = ["ec2:CreateTags"]
    resources = [
      "${local.arn_prefix}:instance/*",
      "${local.arn_prefix}:volume/*",
      "${local.arn_prefix}:security-group/*",
    ]

    condition {
      test     = "StringEquals"
      variable = "ec2:CreateAction"
      values   = ["RunInstances", "CreateSecurityGroup"]
    }
  }

  statement {
    sid       = "CreateTaggedGroups"
    actions   = ["ec2:CreateSecurityGroup"]
    resources = ["${local.arn_prefix}:security-group/*"]

    condition {
      test     = "Null"
      variable = "aws:RequestTag/${local.tagged}"
      values   = ["false"]
    }
  }

  statement {
    sid       = "CreateGroupsInVpcs"
    actions   = ["ec2:CreateSecurityGroup"]
    resources = ["${local.arn_prefix}:vpc/*"]
  }

  statement {
    sid = "TaggedInstances"
    actions = [
      "ec2:GetConsoleOutput",
      "ec2:StartInstances",
      "ec2:TerminateInstances",
    ]
    resources = ["${local.arn_prefix}:instance/*"]

    condition {
      test     = "Null"
      variable = "ec2:ResourceTag/${local.tagged}"
      values   = ["false"]
    }
  }

  statement {
    sid = "TaggedGroups"
    actions = [
      "ec2:AuthorizeSecurityGroupIngress",
      "ec2:DeleteSecurityGroup",
    ]
    resources = ["${local.arn_prefix}:security-group/*"]

    condition {
      test     = "Null"
      variable = "ec2:ResourceTag/${local.tagged}"
      values   = ["false"]
    }
  }

  statement {
    sid       = "TaggedVolumes"
    actions   = ["ec2:DeleteVolume"]
    resources = ["${local.arn_prefix}:volume/*"]

    condition {
      test     = "Null"
      variable = "ec2:ResourceTag/${local.tagged}"
      values   = ["false"]
    }
  }

  # Clusters that name a role_arn: the service passes the tenant's id as
  # the external id, which each role's trust policy should require.
  statement {
    sid       = "TenantRoles"
    actions   = ["sts:AssumeRole"]
    resources = var.tenant_role_arns
  }
}

data "aws_iam_policy_document" "instance" {
  statement {
    sid     = "ReadKeysAtBoot"
    actions = ["secretsmanager:GetSecretValue"]
    resources = [
      aws_secretsmanager_secret.token_key.arn,
      aws_secretsmanager_secret.secret_key.arn,
      aws_db_instance.this.master_user_secret[0].secret_arn,
    ]
  }

  statement {
    sid = "ShipLogs"
    actions = [
      "logs:CreateLogStream",
      "logs:DescribeLogStreams",
      "logs:PutLogEvents",
    ]
    resources = [
      aws_cloudwatch_log_group.this.arn,
      "${aws_cloudwatch_log_group.this.arn}:*",
    ]
  }

  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]
    content {
      sid       = "DecryptKeys"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_role" "service" {
  name_prefix        = "${var.name}-"
  description        = "Kubeforge service instances"
  assume_role_policy = data.aws_iam_policy_document.assume_ec2.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "provider" {
  name   = "aws-provider"
  role   = aws_iam_role.service.id
  policy = data.aws_iam_policy_document.provider.json
}

resource "aws_iam_role_policy" "instance" {
  name   = "instance"
  role   = aws_iam_role.service.id
  policy = data.aws_iam_policy_document.instance.json
}

resource "aws_iam_instance_profile" "service" {
  name_prefix = "${var.name}-"
  role        = aws_iam_role.service.name
  tags        = local.tags
}
