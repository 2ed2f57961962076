# The keys every replica must share (README, "Running against your own
# PostgreSQL"): the token signing key, the secret-sealing key and the SSH
# key the service logs in to machines with (a machine launched by one
# replica is bootstrapped and repaired by any other). Instances read them
# at boot; the user-data names only their ARNs. The generated values are
# in the Terraform state: keep the state encrypted and private.

resource "random_id" "token_key" {
  byte_length = 32
}

resource "random_id" "secret_key" {
  byte_length = 32
}

resource "tls_private_key" "ssh" {
  algorithm = "ED25519"
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

resource "aws_secretsmanager_secret" "ssh_key" {
  name_prefix = "${var.name}-ssh-key-"
  description = "The OpenSSH private key Kubeforge logs in to machines with"
  kms_key_id  = var.kms_key_arn
  tags        = local.tags
}

resource "aws_secretsmanager_secret_version" "ssh_key" {
  secret_id     = aws_secretsmanager_secret.ssh_key.id
  secret_string = tls_private_key.ssh.private_key_openssh
}
