//! The Terraform module that deploys Kubeforge (`terraform/`), checked
//! without a Terraform binary by `tests/python/terraform_check.py`
//! (python-hcl2, from the tests' virtualenv): it parses, is laid out as
//! `terraform fmt` lays it out, every variable is used and every reference
//! resolves, no secret has a default or rides in user-data, the database
//! is private and storage encrypted, and the service role's policy grants
//! exactly the actions `kubeforge aws required-actions` prints (the list a
//! unit test holds to the provider's EC2 calls). Each check also rejects a
//! broken fixture of its own (`tests/fixtures/terraform/`), naming the
//! problem.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// The checker's exit status and output (stdout then stderr).
fn check(root: &Path, actions: Option<&Path>) -> (bool, String) {
    let mut cmd = Command::new(kubeforge_tests::python::tool("python"));
    cmd.arg(repo().join("tests/python/terraform_check.py"))
        .arg(root);
    if let Some(file) = actions {
        cmd.arg("--required-actions").arg(file);
    }
    let out = cmd.output().expect("running terraform_check.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn write_actions(name: &str, lines: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kf-terraform-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join(name);
    std::fs::write(&file, lines).expect("actions file");
    file
}

#[test]
fn the_module_and_examples_pass_every_check_against_the_binarys_actions() {
    let out = Command::new(kubeforge_tests::cli::kubeforge_bin())
        .args(["aws", "required-actions"])
        .output()
        .expect("kubeforge aws required-actions");
    assert!(out.status.success(), "{out:?}");
    let actions = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        actions.lines().any(|l| l == "ec2:RunInstances")
            && actions.lines().any(|l| l == "sts:AssumeRole"),
        "{actions}"
    );
    let file = write_actions("required-actions.txt", &actions);
    let terraform = repo().join("terraform");
    let (ok, text) = check(&terraform, Some(&file));
    assert!(ok, "terraform/ fails its checks:\n{text}");
    assert!(text.contains("in 3 modules"), "{text}");
    // The module and both examples are what was checked.
    for dir in ["modules/kubeforge", "examples/minimal", "examples/ha"] {
        assert!(terraform.join(dir).join("main.tf").is_file(), "{dir}");
    }
}

/// Each fixture breaks one rule; the checker must fail on it, say why,
/// and report no problem of another kind (the fixture is otherwise sound).
#[test]
fn each_check_rejects_its_broken_fixture_naming_the_problem() {
    let fixtures = repo().join("tests/fixtures/terraform");
    let actions = write_actions(
        "fixture-actions.txt",
        "ec2:DescribeInstances\nec2:RunInstances\nsts:AssumeRole\n",
    );
    let cases: &[(&str, &str, &str)] = &[
        ("parse_error", "parse", "does not parse"),
        ("bad_fmt_alignment", "fmt", "'=' at column 8, expected 15"),
        ("bad_fmt_indent", "fmt", "indented 4 spaces, expected 2"),
        (
            "unused_variable",
            "variables",
            "variable region: variables: is declared but never used",
        ),
        (
            "unresolved_reference",
            "references",
            "aws_security_group.service does not exist",
        ),
        (
            "output_to_nothing",
            "outputs",
            "output log_group_arn: outputs: refers to nothing",
        ),
        (
            "secret_default",
            "secrets",
            "variable db_password: secrets: looks secret but has a default",
        ),
        (
            "user_data_secret",
            "secrets",
            "user_data carries a secret value (random_id.token_key)",
        ),
        (
            "public_db",
            "database",
            "aws_db_instance.this: database: is publicly accessible",
        ),
        (
            "unencrypted_storage",
            "encryption",
            "aws_db_instance.this: encryption: storage is not encrypted",
        ),
        ("policy_missing_action", "policy", "lacks ec2:RunInstances"),
        ("policy_extra_action", "policy", "grants ec2:CreateVpc"),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (dir, check_name, message) in cases {
        let policy = check_name == &"policy";
        let (ok, text) = check(&fixtures.join(dir), policy.then_some(actions.as_path()));
        assert!(!ok, "{dir}: the checker passed it:\n{text}");
        assert!(text.contains(message), "{dir}: no {message:?} in:\n{text}");
        for line in text.lines().filter(|l| !l.ends_with("problem(s)")) {
            assert!(
                line.contains(&format!(": {check_name}: ")),
                "{dir}: a problem of another kind than {check_name}: {line}"
            );
        }
        seen.insert(dir.to_string());
    }
    // Every fixture on disk is one of the cases above.
    let on_disk: std::collections::BTreeSet<String> = std::fs::read_dir(&fixtures)
        .expect("fixtures")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(on_disk, seen);
}

/// The same policy passes once it grants what is required: the fixtures
/// fail for their defect, not for the way the checker reads them.
#[test]
fn a_policy_granting_exactly_the_required_actions_passes() {
    let dir = std::env::temp_dir().join(format!("kf-terraform-exact-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(
        dir.join("main.tf"),
        r#"data "aws_iam_policy_document" "provider" {
  statement {
    actions = [
      "ec2:DescribeInstances",
      "ec2:RunInstances",
    ]
    resources = ["*"]
  }

  statement {
    effect    = "Deny"
    actions   = ["ec2:CreateVpc"]
    resources = ["*"]
  }

  statement {
    actions   = ["sts:AssumeRole"]
    resources = ["arn:aws:iam::*:role/kubeforge-*"]
  }
}

output "policy" {
  description = "The policy."
  value       = data.aws_iam_policy_document.provider.json
}
"#,
    )
    .expect("main.tf");
    let actions = write_actions(
        "exact-actions.txt",
        "ec2:DescribeInstances\nec2:RunInstances\nsts:AssumeRole\n",
    );
    let (ok, text) = check(&dir, Some(&actions));
    assert!(ok, "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
