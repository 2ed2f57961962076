# The keys every replica must share (README, "Running against your own
# PostgreSQL"): the token signing key and the secret-sealing key. (The SSH
# key the service logs in to machines with is shared through the database,
# sealed with the second.) Instances read them at boot; the user-data
# names only their ARNs. The generated values are in the Terraform state:
# keep the state encrypted and private.

resource "random_id" "token_key" {
  byte_length = 32
}

resource "random_id" "secret_key" {
  byte_length = 32
}

resource "aws_secretsmanager_secret" "token_key" {
  name_prefix = "${var.name}-token-key-"
  description = "Kubeforge token signing key (64 hex), KUBEFORGE_TOKEN_KEY"
  kms_key_id  = var.kms_key_arn
  tags        = local.tags
}

resource "aws_secretsmanager_secret_version" "token_key" {
  secret_id     = aws_secretsmanager_secret.token_key.id
  secret_string = random_id.token_key.hex
}

resource "aws_secretsmanager_secret" "secret_key" {
  name_prefix = "${var.name}-secret-key-"
  description = "Kubeforge secret-sealing key (64 hex), KUBEFORGE_SECRET_KEY"
  kms_key_id  = var.kms_key_arn
  tags        = local.tags
}

resource "aws_secretsmanager_secret_version" "secret_key" {
  secret_id     = aws_secretsmanager_secret.secret_key.id
  secret_string = random_id.secret_key.hex
}
