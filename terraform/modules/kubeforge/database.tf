resource "aws_db_subnet_group" "this" {
  name_prefix = "${var.name}-"
  description = "Kubeforge database"
  subnet_ids  = var.service_subnet_ids
  tags        = local.tags
}

resource "aws_db_parameter_group" "this" {
  name_prefix = "${var.name}-"
  family      = "postgres${var.db_engine_version}"
  description = "Kubeforge database"
  tags        = local.tags

  # The service's PostgreSQL client (sqlx) is built without TLS, so the
  # connection stays inside the VPC, between two security groups that
  # admit only each other, unencrypted; PostgreSQL 15 and later refuse
  # that unless told (terraform/README.md, "Limits").
  parameter {
    name  = "rds.force_ssl"
    value = "0"
  }
}

resource "aws_db_instance" "this" {
  identifier_prefix = "${var.name}-"
  engine            = "postgres"
  engine_version    = var.db_engine_version
  instance_class    = var.db_instance_class
  db_name           = "kubeforge"
  username          = "kubeforge"

  # RDS makes the password and keeps it in Secrets Manager: it is never
  # in this configuration, its state or the user-data.
  manage_master_user_password   = true
  master_user_secret_kms_key_id = var.kms_key_arn

  allocated_storage = var.db_allocated_storage_gb
  storage_type      = "gp3"
  storage_encrypted = true
  kms_key_id        = var.kms_key_arn

  multi_az               = var.db_multi_az
  publicly_accessible    = false
  db_subnet_group_name   = aws_db_subnet_group.this.name
  parameter_group_name   = aws_db_parameter_group.this.name
  vpc_security_group_ids = [aws_security_group.db.id]

  backup_retention_period   = var.db_backup_retention_days
  deletion_protection       = var.db_deletion_protection
  skip_final_snapshot       = false
  final_snapshot_identifier = "${var.name}-final"
  copy_tags_to_snapshot     = true
  apply_immediately         = false

  tags = local.tags
}
