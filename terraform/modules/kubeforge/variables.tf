variable "name" {
  type        = string
  description = "Prefix of every resource's name (and the log group's)."
  default     = "kubeforge"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name))
    error_message = "name must be 2 to 31 lowercase letters, digits or '-', starting with a letter."
  }
}

variable "vpc_id" {
  type        = string
  description = "The VPC the service, its load balancer and its database run in."

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must look like vpc-0abc123."
  }
}

variable "service_subnet_ids" {
  type        = list(string)
  description = "Private subnets the service instances run in, one per availability zone (at least two: the database's subnet group needs two zones)."

  validation {
    condition     = length(var.service_subnet_ids) >= 2 && alltrue([for s in var.service_subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "service_subnet_ids must be at least two subnet ids (subnet-...)."
  }
}

variable "load_balancer_subnet_ids" {
  type        = list(string)
  description = "Subnets of the network load balancer: public ones for an internet-facing API, else private."

  validation {
    condition     = length(var.load_balancer_subnet_ids) >= 1 && alltrue([for s in var.load_balancer_subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "load_balancer_subnet_ids must be one or more subnet ids (subnet-...)."
  }
}

variable "internal" {
  type        = bool
  description = "Make the load balancer internal (reachable from the VPC and peered networks only)."
  default     = false
}

variable "certificate_arn" {
  type        = string
  description = "ACM certificate the load balancer's TLS listener (port 443) serves the API with; it should name api_hostname."

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/.+$", var.certificate_arn))
    error_message = "certificate_arn must be an ACM certificate ARN."
  }
}

variable "api_hostname" {
  type        = string
  description = "The DNS name clients use for the API and the gRPC endpoint (a record you point at the load balancer); null: the load balancer's own name."
  default     = null

  validation {
    condition     = var.api_hostname == null || can(regex("^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$", var.api_hostname))
    error_message = "api_hostname must be a lowercase DNS name."
  }
}

variable "api_ingress_cidrs" {
  type        = list(string)
  description = "Networks allowed to reach the API (443) on the load balancer."

  validation {
    condition     = length(var.api_ingress_cidrs) > 0 && alltrue([for c in var.api_ingress_cidrs : can(cidrhost(c, 0))])
    error_message = "api_ingress_cidrs must be one or more CIDR blocks."
  }
}

variable "grpc_ingress_cidrs" {
  type        = list(string)
  description = "Networks allowed to reach the cluster-autoscaler externalgrpc endpoint (grpc_port, mTLS end to end); empty: the gRPC endpoint is off."
  default     = []

  validation {
    condition     = alltrue([for c in var.grpc_ingress_cidrs : can(cidrhost(c, 0))])
    error_message = "grpc_ingress_cidrs must be CIDR blocks."
  }
}

variable "grpc_port" {
  type        = number
  description = "Port of the externalgrpc endpoint, on the load balancer and the instances."
  default     = 8081

  validation {
    condition     = var.grpc_port >= 1024 && var.grpc_port <= 65535 && var.grpc_port != 8443
    error_message = "grpc_port must be 1024-65535 and not 8443 (the API's port on the instances)."
  }
}

variable "tenant_cidrs" {
  type        = list(string)
  description = "Networks of tenant clusters' instances: the service reaches them on SSH (22) and the API server port (6443)."

  validation {
    condition     = length(var.tenant_cidrs) > 0 && alltrue([for c in var.tenant_cidrs : can(cidrhost(c, 0))])
    error_message = "tenant_cidrs must be one or more CIDR blocks."
  }
}

variable "cluster_dns" {
  type        = bool
  description = "Serve tenant clusters' DNS from the instances (kubeforge serve --dns-listen on port 53 of each instance's private address; README \"Cluster DNS\"), open to tenant_cidrs."
  default     = true
}

variable "tenant_api_cidrs" {
  type        = list(string)
  description = "Further networks allowed to reach tenant clusters' API servers (kubeforge serve --aws-api-cidr), e.g. your tenants' offices."
  default     = []

  validation {
    condition     = alltrue([for c in var.tenant_api_cidrs : can(cidrhost(c, 0))])
    error_message = "tenant_api_cidrs must be CIDR blocks."
  }
}

variable "tenant_role_arns" {
  type        = list(string)
  description = "Roles the service may assume for clusters that name a role_arn (with the tenant's id as the external id)."
  default     = ["arn:aws:iam::*:role/kubeforge-*"]

  validation {
    condition     = length(var.tenant_role_arns) > 0 && alltrue([for r in var.tenant_role_arns : can(regex("^arn:aws[a-z-]*:iam::([0-9]{12}|\\*):role/.+$", r))])
    error_message = "tenant_role_arns must be IAM role ARNs (the account may be *)."
  }
}

variable "ami_id" {
  type        = string
  description = "The service image (terraform/README.md, \"The image\"): Debian bookworm with /usr/local/bin/kubeforge, curl, python3, openssl and openssh-client, and the Kubernetes binaries and the pause image under /var/lib/kubeforge/cache."

  validation {
    condition     = can(regex("^ami-[0-9a-f]+$", var.ami_id))
    error_message = "ami_id must look like ami-0abc123."
  }
}

variable "etcd_sha256" {
  type        = string
  description = "The sha256 of /usr/bin/etcd in the tenants' machine images (Debian bookworm's etcd-server): the service checks it before a control plane starts."

  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.etcd_sha256))
    error_message = "etcd_sha256 must be 64 lowercase hex digits."
  }
}

variable "instance_type" {
  type        = string
  description = "EC2 instance type of the service instances."
  default     = "t3.medium"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.instance_type))
    error_message = "instance_type must look like t3.medium."
  }
}

variable "replicas" {
  type = object({
    min     = number
    max     = number
    desired = number
  })
  description = "Size of the auto-scaling group of kubeforge serve instances (they share the database and divide the job queue)."
  default = {
    min     = 1
    max     = 1
    desired = 1
  }

  validation {
    condition     = var.replicas.min >= 1 && var.replicas.min <= var.replicas.desired && var.replicas.desired <= var.replicas.max
    error_message = "replicas must satisfy 1 <= min <= desired <= max."
  }
}

variable "workers" {
  type        = number
  description = "Job workers per instance (kubeforge serve --workers)."
  default     = 4

  validation {
    condition     = var.workers >= 1 && var.workers <= 64
    error_message = "workers must be 1 to 64."
  }
}

variable "db_instance_class" {
  type        = string
  description = "RDS instance class of the PostgreSQL database."
  default     = "db.t4g.medium"

  validation {
    condition     = can(regex("^db\\.[a-z0-9]+\\.[a-z0-9]+$", var.db_instance_class))
    error_message = "db_instance_class must look like db.t4g.medium."
  }
}

variable "db_engine_version" {
  type        = string
  description = "PostgreSQL major version of the database."
  default     = "16"

  validation {
    condition     = contains(["14", "15", "16", "17"], var.db_engine_version)
    error_message = "db_engine_version must be 14, 15, 16 or 17."
  }
}

variable "db_allocated_storage_gb" {
  type        = number
  description = "Storage of the database in GiB (gp3, encrypted)."
  default     = 20

  validation {
    condition     = var.db_allocated_storage_gb >= 20 && var.db_allocated_storage_gb <= 65536
    error_message = "db_allocated_storage_gb must be 20 to 65536."
  }
}

variable "db_multi_az" {
  type        = bool
  description = "Run the database with a standby in a second availability zone."
  default     = false
}

variable "db_backup_retention_days" {
  type        = number
  description = "Days of automated database backups."
  default     = 7

  validation {
    condition     = var.db_backup_retention_days >= 1 && var.db_backup_retention_days <= 35
    error_message = "db_backup_retention_days must be 1 to 35."
  }
}

variable "db_deletion_protection" {
  type        = bool
  description = "Refuse to delete the database (turn off before destroying)."
  default     = true
}

variable "kms_key_arn" {
  type        = string
  description = "KMS key for the database's storage and the secrets; null: the AWS-managed keys."
  default     = null

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN."
  }
}

variable "log_retention_days" {
  type        = number
  description = "Days the CloudWatch log group keeps the service's logs."
  default     = 30

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one CloudWatch accepts (1, 3, 5, 7, 14, 30, 60, 90, ...)."
  }
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
  default     = {}
}
