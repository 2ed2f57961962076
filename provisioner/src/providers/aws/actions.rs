//! The IAM actions the `aws` provider needs, for the service's role
//! (`kubeforge aws required-actions`; the Terraform module's policy is
//! checked against this list by `tests/tests/terraform.rs`).
//!
//! The EC2 part is held to the code: a unit test reads `mod.rs` and
//! collects every operation it names to [`call::call`](super::call) or
//! `count_ok`, so an EC2 call added without its line here fails the suite,
//! and a line here that nothing calls does too. Two entries are not calls
//! of their own: `ec2:CreateTags`, which AWS requires for tagging a
//! resource in the request that makes it (`RunInstances` and
//! `CreateSecurityGroup` carry `TagSpecifications`), and `sts:AssumeRole`,
//! made by the SDK's credential provider when a cluster names a role.

/// Every IAM action the provider's calls need, sorted.
pub const REQUIRED_ACTIONS: &[&str] = &[
    "ec2:AuthorizeSecurityGroupIngress",
    "ec2:CreateSecurityGroup",
    "ec2:CreateTags",
    "ec2:DeleteSecurityGroup",
    "ec2:DeleteVolume",
    "ec2:DescribeInstances",
    "ec2:DescribeSecurityGroups",
    "ec2:DescribeSubnets",
    "ec2:DescribeVolumes",
    "ec2:DescribeVpcs",
    "ec2:GetConsoleOutput",
    "ec2:RunInstances",
    "ec2:StartInstances",
    "ec2:TerminateInstances",
    "sts:AssumeRole",
];

/// Actions in [`REQUIRED_ACTIONS`] that no `call` names: what AWS asks for
/// besides the operations themselves.
#[cfg(test)]
const IMPLIED_EC2: &[&str] = &["ec2:CreateTags"];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The EC2 operations `source` names as the first string argument of
    /// `call(` or the second of `count_ok(`.
    fn operations_in(source: &str) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        for (marker, skip_args) in [(".call(", 0), ("count_ok(", 1)] {
            let mut rest = source;
            while let Some(at) = rest.find(marker) {
                rest = &rest[at + marker.len()..];
                let mut args = rest;
                for _ in 0..skip_args {
                    match args.find(',') {
                        Some(comma) => args = &args[comma + 1..],
                        None => args = "",
                    }
                }
                let args = args.trim_start();
                if let Some(quoted) = args.strip_prefix('"') {
                    let name: String = quoted
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric())
                        .collect();
                    if quoted[name.len()..].starts_with('"') && !name.is_empty() {
                        found.insert(name);
                    }
                }
            }
        }
        found
    }

    #[test]
    fn the_ec2_actions_are_the_operations_the_provider_calls() {
        let called: BTreeSet<String> = operations_in(include_str!("mod.rs"))
            .into_iter()
            .map(|op| format!("ec2:{op}"))
            .chain(IMPLIED_EC2.iter().map(|a| a.to_string()))
            .collect();
        let listed: BTreeSet<String> = REQUIRED_ACTIONS
            .iter()
            .filter(|a| a.starts_with("ec2:"))
            .map(|a| a.to_string())
            .collect();
        let missing: Vec<_> = called.difference(&listed).collect();
        let extra: Vec<_> = listed.difference(&called).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "REQUIRED_ACTIONS is out of step with providers/aws/mod.rs: \
             called but not listed {missing:?}, listed but not called {extra:?}"
        );
        // RunInstances is sent by hand (not through `call`) and counted.
        assert!(called.contains("ec2:RunInstances"));
    }

    #[test]
    fn tagging_on_create_is_why_create_tags_is_listed() {
        let source = include_str!("mod.rs");
        assert!(
            source.contains(".tag_specifications("),
            "no TagSpecifications left: drop ec2:CreateTags"
        );
    }

    #[test]
    fn assume_role_is_listed_because_the_provider_assumes_roles() {
        assert!(include_str!("mod.rs").contains("AssumeRoleProvider"));
        assert!(REQUIRED_ACTIONS.contains(&"sts:AssumeRole"));
    }

    #[test]
    fn the_scan_finds_calls_across_lines_and_skips_other_strings() {
        let src = r#"
            self
                .call("DescribeThings", || x)
            self.call( "StartThings", || y)
            call::count_ok(counters, "LaunchThings");
            failure.into_error(counters, "NotACall", 1);
            self.call(operation, f)
        "#;
        let found: Vec<_> = operations_in(src).into_iter().collect();
        assert_eq!(found, ["DescribeThings", "LaunchThings", "StartThings"]);
    }

    #[test]
    fn the_list_is_sorted_and_has_no_duplicates() {
        let mut sorted = REQUIRED_ACTIONS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, REQUIRED_ACTIONS);
    }
}
