# Example Packer template: bake nginx with the kmstls.nginx_pkcs11 stack into
# an Amazon machine image, with the private keys left in Cloud KMS.
#
# Every value marked "placeholder" must be replaced; nothing here was run
# against a cloud account. From the root of a checkout of the collection
# (so that ansible.cfg links the collection, see README.md):
#
#   packer init docs/examples/packer
#   packer build docs/examples/packer
#
# What the image gets: site.yml in image mode. Packer's ansible provisioner
# passes -e packer_build_name=<source name>, which every role detects;
# kmstls_image_build=true below says the same explicitly. The stack is
# compiled and installed, all configuration that holds no secret is written
# (image-vars.yml), and nginx is enabled but not started. The image holds no
# PIN, token or credentials: site.yml refuses them, and a host that already
# has some, before it changes anything.
#
# First boot: run playbooks/serve.yml against the new instance, with the
# secrets and without image mode, for example from your deploy host:
#
#   ansible-playbook -i inventory/first-boot -u admin playbooks/serve.yml \
#     -e @docs/examples/packer/image-vars.yml -e @secrets.vault.yml --ask-vault-pass
#
# with the instance in the group kmstls_nginx of that inventory, which is
# the group the playbooks apply to.
# (image-vars.yml does not set kmstls_image_build; this template passes it.)
# where the secrets are libkmsp11_credentials (the service account key; or
# none, when the instance's own identity reaches Cloud KMS) and, for a token
# with a PIN, pkcs11_user_pin. It compiles nothing, checks nginx.conf with
# the real keys, starts nginx and waits for a TLS handshake. Until then the
# enabled nginx unit skips itself at boot (ConditionPathExists on its
# certificates, PIN and credentials files) instead of failing in a loop.

packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.3.0"
    }
    ansible = {
      source  = "github.com/hashicorp/ansible"
      version = ">= 1.1.0"
    }
  }
}

variable "region" {
  type    = string
  default = "eu-west-1" # placeholder
}

variable "subnet_id" {
  type    = string
  default = "subnet-00000000000000000" # placeholder: a subnet the build machine can reach
}

variable "ssh_username" {
  type    = string
  default = "admin" # Debian's cloud images; "centos" or "ec2-user" elsewhere
}

# The server certificate (public, not secret) that nginx presents with the
# key in Cloud KMS; it is copied into the image.
variable "certificate_file" {
  type    = string
  default = "certs/www.example.com.crt" # placeholder
}

source "amazon-ebs" "kmstls-nginx" {
  region        = var.region
  subnet_id     = var.subnet_id
  instance_type = "t3.medium" # compiling OpenSSL and nginx takes a few minutes on 2 vCPUs
  ami_name      = "kmstls-nginx-${formatdate("YYYYMMDD-hhmmss", timestamp())}"

  source_ami_filter {
    filters = {
      name                = "debian-12-amd64-*"
      architecture        = "x86_64"
      virtualization-type = "hvm"
    }
    owners      = ["123456789012"] # placeholder: the account that publishes your base image
    most_recent = true
  }

  ssh_username = var.ssh_username
}

build {
  sources = ["source.amazon-ebs.kmstls-nginx"]

  provisioner "file" {
    source      = var.certificate_file
    destination = "/tmp/www.example.com.crt"
  }

  provisioner "shell" {
    inline = [
      "sudo install -D -o root -g root -m 0644 /tmp/www.example.com.crt /etc/kmstls/certs/www.example.com.crt",
      "rm -f /tmp/www.example.com.crt",
    ]
  }

  provisioner "ansible" {
    playbook_file = "${path.root}/../../../playbooks/site.yml"
    user          = var.ssh_username
    # The playbooks apply to the hosts of this group.
    groups = ["kmstls_nginx"]

    # The playbooks escalate with become: the SSH user needs passwordless
    # sudo, as the default user of cloud images has.

    # By default the plugin puts an SSH proxy of its own between Ansible and
    # the instance. Connecting directly is simpler and faster, but needs the
    # instance reachable from the machine that runs Packer (subnet_id).
    use_proxy = false

    # With use_proxy = true instead: the proxy's host key and the key it
    # makes for Ansible are ssh-rsa (SHA-1) keys, which OpenSSH 8.8 and later
    # refuse by default ("no matching host key type found"). Then add:
    #   "--extra-vars", "ansible_ssh_extra_args='-o HostKeyAlgorithms=+ssh-rsa -o PubkeyAcceptedKeyTypes=+ssh-rsa'",
    # and, with OpenSSH 9's scp over SFTP, "--scp-extra-args", "'-O'".

    ansible_env_vars = [
      # The checkout's ansible.cfg: its collections path links the collection.
      "ANSIBLE_CONFIG=${path.root}/../../../ansible.cfg",
      "ANSIBLE_HOST_KEY_CHECKING=False",
    ]

    extra_arguments = [
      "--extra-vars", "kmstls_image_build=true",
      "--extra-vars", "@${path.root}/image-vars.yml",
      # Debian 12 and EL 8/9 have /usr/bin/python3. On CentOS 7 name the
      # interpreter yourself, since discovery may pick one the modules cannot use:
      #   "--extra-vars", "ansible_python_interpreter=/usr/bin/python",
      # and set source_build_centos7_use_vault=true (its mirrors are gone).
      "--extra-vars", "ansible_python_interpreter=/usr/bin/python3",
    ]
  }
}
