//! The upstream Kubernetes conformance suite held against a Kubeforge
//! cluster: the spec list kept in the repository, the ginkgo focus built
//! from it, and the verdict read from the suite's JUnit reports.
//!
//! The list (`tests/conformance/specs-1.20.txt`) accounts for every
//! `[Conformance]` spec of the suite, one line each, tab-separated:
//!
//! ```text
//! pass    -               <spec>   run; must pass
//! fail    <reason>        <spec>   run; known to fail for <reason>
//! skip    <reason>        <spec>   not run (it needs an image no registry here serves)
//! ```
//!
//! The verdict fails on a `pass` spec that fails or does not run, on a
//! `fail` spec that passes (promote it: the list only grows), on a suite
//! spec the list does not name and on a listed spec the suite does not
//! have. Pure code, unit-tested here; the run is `tests/tests/conformance.rs`.

use std::collections::{BTreeMap, BTreeSet};

/// What the list expects of one spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    Pass,
    Fail(String),
    Skip(String),
}

/// The spec list, by full spec name.
#[derive(Debug, Default)]
pub struct SpecList {
    pub specs: BTreeMap<String, Expect>,
}

impl SpecList {
    /// Parses the list; every malformed or repeated line is an error
    /// naming its line number.
    pub fn parse(text: &str) -> Result<SpecList, String> {
        let mut specs = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.splitn(3, '\t');
            let (Some(status), Some(reason), Some(spec)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(format!(
                    "line {n}: want <status>\\t<reason>\\t<spec>: {line:?}"
                ));
            };
            let spec = normalize(spec);
            let reason = reason.trim();
            if !spec.contains("[Conformance]") {
                return Err(format!("line {n}: not a [Conformance] spec: {spec:?}"));
            }
            let expect = match (status.trim(), reason) {
                ("pass", "-") => Expect::Pass,
                ("pass", r) => {
                    return Err(format!("line {n}: a pass line has reason '-', not {r:?}"))
                }
                ("fail" | "skip", "" | "-") => {
                    return Err(format!("line {n}: a {status} line needs a reason"))
                }
                ("fail", r) => Expect::Fail(r.to_string()),
                ("skip", r) => Expect::Skip(r.to_string()),
                (s, _) => return Err(format!("line {n}: unknown status {s:?} (pass, fail, skip)")),
            };
            if specs.insert(spec.clone(), expect).is_some() {
                return Err(format!("line {n}: {spec:?} is listed twice"));
            }
        }
        Ok(SpecList { specs })
    }

    /// The specs to run (`pass` and `fail`), serial ones apart: the
    /// upstream suite runs `[Serial]` specs one at a time after the rest.
    pub fn to_run(&self) -> (Vec<&str>, Vec<&str>) {
        self.specs
            .iter()
            .filter(|(_, e)| !matches!(e, Expect::Skip(_)))
            .map(|(s, _)| s.as_str())
            .partition(|s| !s.contains("[Serial]"))
    }

    pub fn count(&self, f: impl Fn(&Expect) -> bool) -> usize {
        self.specs.values().filter(|e| f(e)).count()
    }
}

/// A spec's name with every run of white space made one space: the
/// suite's own names have double spaces in places (a description ending
/// in a space, then " [Conformance]"), which nobody can see in a list.
pub fn normalize(name: &str) -> String {
    name.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A ginkgo focus regular expression for these specs. Ginkgo matches it
/// against the spec's text with its container texts before it (and a
/// top-level container of its own first), so it is anchored at the end
/// only; a spec whose name ends with another's would also run, and the
/// verdict names it. Spaces match any run of white space.
pub fn focus(specs: &[&str]) -> String {
    let alts: Vec<String> = specs
        .iter()
        .map(|s| {
            s.split_whitespace()
                .map(regex_escape)
                .collect::<Vec<_>>()
                .join(r"\s+")
        })
        .collect();
    format!("(?:{})$", alts.join("|"))
}

/// Go's `regexp.QuoteMeta`.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// What one run of the suite did, by spec name.
#[derive(Debug, Default)]
pub struct Outcome {
    pub passed: BTreeSet<String>,
    /// Spec -> the failure message (first line).
    pub failed: BTreeMap<String, String>,
    /// Every `[Conformance]` spec the suite has, run or not.
    pub suite: BTreeSet<String>,
    /// Spec -> seconds, for the specs that ran.
    pub seconds: BTreeMap<String, f64>,
    /// Spec -> the first run's failure message, for specs that failed once
    /// and passed when run again on their own (see [`Outcome::rerun`]).
    pub flaked: BTreeMap<String, String>,
}

impl Outcome {
    /// Adds one ginkgo JUnit report. Suite-level nodes (`[BeforeSuite]`,
    /// `[SynchronizedAfterSuite]`, ...) count as specs: their failure
    /// fails the run.
    pub fn add_junit(&mut self, xml: &str) -> Result<(), String> {
        let doc = roxmltree::Document::parse(xml).map_err(|e| format!("JUnit report: {e}"))?;
        for case in doc.descendants().filter(|n| n.has_tag_name("testcase")) {
            let name = normalize(case.attribute("name").unwrap_or_default());
            let suite_node = name.starts_with('[') && name.contains("Suite]");
            if !name.contains("[Conformance]") && !suite_node {
                continue;
            }
            if !suite_node {
                self.suite.insert(name.clone());
            }
            let failure = case
                .children()
                .find(|c| c.has_tag_name("failure") || c.has_tag_name("error"));
            let skipped = case.children().any(|c| c.has_tag_name("skipped"));
            if let Some(f) = failure {
                let text = f
                    .attribute("message")
                    .map(str::to_string)
                    .or_else(|| f.text().map(str::to_string))
                    .unwrap_or_default();
                let first = failure_summary(&text);
                self.passed.remove(&name);
                self.failed.insert(name.clone(), first);
            } else if !skipped && !self.failed.contains_key(&name) {
                self.passed.insert(name.clone());
            }
            if !skipped {
                if let Some(t) = case.attribute("time").and_then(|t| t.parse().ok()) {
                    self.seconds.insert(name, t);
                }
            }
        }
        Ok(())
    }
}

impl Outcome {
    /// Adds another phase of the same run (other specs), with the rules of
    /// [`Outcome::add_junit`]: a failure anywhere wins.
    pub fn merge(&mut self, other: Outcome) {
        self.suite.extend(other.suite);
        for (spec, msg) in other.failed {
            self.passed.remove(&spec);
            self.failed.insert(spec, msg);
        }
        for spec in other.passed {
            if !self.failed.contains_key(&spec) {
                self.passed.insert(spec);
            }
        }
        self.seconds.extend(other.seconds);
        self.flaked.extend(other.flaked);
    }

    /// The specs listed `pass` that failed: the ones worth running again.
    /// None when more than `limit` failed (that is no flake, and rerunning
    /// would only hide how broken the run was) or a suite node failed.
    pub fn to_rerun(&self, list: &SpecList, limit: usize) -> Vec<String> {
        if self
            .failed
            .keys()
            .any(|n| n.starts_with('[') && n.contains("Suite]"))
        {
            return Vec::new();
        }
        let failed: Vec<String> = self
            .failed
            .keys()
            .filter(|s| list.specs.get(*s) == Some(&Expect::Pass))
            .cloned()
            .collect();
        if failed.len() > limit {
            return Vec::new();
        }
        failed
    }

    /// Takes in a second run of some failed specs: a spec that passed
    /// there counts as passed and is remembered as flaked, with the first
    /// failure; one that failed again keeps its first failure, the rerun's
    /// message added.
    pub fn rerun(&mut self, again: &Outcome) {
        for spec in &again.passed {
            if let Some(msg) = self.failed.remove(spec) {
                self.flaked.insert(spec.clone(), msg);
                self.passed.insert(spec.clone());
            }
        }
        for (spec, msg) in &again.failed {
            if let Some(first) = self.failed.get_mut(spec) {
                *first = format!("{first} (and again when rerun: {msg})");
            }
        }
    }
}

/// What a ginkgo failure says, in one line: its text without the code
/// location ginkgo puts first, white space squeezed, at most 300 chars.
fn failure_summary(text: &str) -> String {
    let said: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| {
            !(l.starts_with('/')
                && l.rsplit(':')
                    .next()
                    .is_some_and(|n| n.parse::<u32>().is_ok()))
        })
        .collect();
    let line = normalize(&said.join(" "));
    match line.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line,
    }
}

/// Everything wrong with a run against the list; empty when it holds.
pub fn verdict(list: &SpecList, run: &Outcome) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, msg) in &run.failed {
        if name.starts_with('[') && name.contains("Suite]") {
            problems.push(format!("suite setup failed: {name}: {msg}"));
        }
    }
    for spec in &run.suite {
        if !list.specs.contains_key(spec) {
            problems.push(format!(
                "the suite has a spec the list does not name: {spec}"
            ));
        }
    }
    for (spec, expect) in &list.specs {
        if !run.suite.contains(spec) {
            problems.push(format!(
                "the list names a spec the suite does not have: {spec}"
            ));
            continue;
        }
        let passed = run.passed.contains(spec);
        match expect {
            Expect::Pass if passed => {}
            Expect::Pass => match run.failed.get(spec) {
                Some(msg) => problems.push(format!("FAILED (expected to pass): {spec}: {msg}")),
                None => problems.push(format!("did not run (expected to pass): {spec}")),
            },
            Expect::Fail(why) if passed => problems.push(format!(
                "newly passes (listed as failing: {why}); mark it `pass` in the list: {spec}"
            )),
            Expect::Fail(_) if !run.failed.contains_key(spec) => {
                problems.push(format!("did not run (listed as failing): {spec}"))
            }
            Expect::Fail(_) => {}
            Expect::Skip(_) if passed || run.failed.contains_key(spec) => {
                problems.push(format!("ran although listed as skip: {spec}"))
            }
            Expect::Skip(_) => {}
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "[sig-api-machinery] Watchers should work [Conformance]";
    const B: &str = "[sig-apps] Deployment should roll (1.2) [Conformance]";
    const C: &str = "[sig-scheduling] SchedulerPredicates [Serial] validates x [Conformance]";

    fn list() -> SpecList {
        SpecList::parse(&format!(
            "# comment\n\npass\t-\t{A}\nskip\timage agnhost\t{B}\nfail\tno pod network (issue 12)\t{C}\n"
        ))
        .unwrap()
    }

    fn junit(cases: &[(&str, &str)]) -> String {
        let mut s =
            String::from("<?xml version=\"1.0\"?>\n<testsuite name=\"Kubernetes e2e suite\">");
        for (name, how) in cases {
            let name = name.replace('&', "&amp;").replace('"', "&quot;");
            match *how {
                "pass" => s.push_str(&format!("<testcase name=\"{name}\" time=\"1.5\"></testcase>")),
                "skip" => s.push_str(&format!("<testcase name=\"{name}\" time=\"0\"><skipped></skipped></testcase>")),
                _ => s.push_str(&format!("<testcase name=\"{name}\" time=\"3\"><failure type=\"Failure\">/src/test/e2e/framework/framework.go:629&#xA;Dec  1 16:00:17.960: {how}&#xA;</failure></testcase>")),
            }
        }
        s.push_str("<testcase name=\"[sig-x] not conformance\"></testcase></testsuite>");
        s
    }

    fn outcome(reports: &[String]) -> Outcome {
        let mut o = Outcome::default();
        for r in reports {
            o.add_junit(r).unwrap();
        }
        o
    }

    #[test]
    fn parses_and_refuses_bad_lines() {
        let l = list();
        assert_eq!(l.specs[A], Expect::Pass);
        assert_eq!(l.specs[B], Expect::Skip("image agnhost".into()));
        let (parallel, serial) = l.to_run();
        assert_eq!(parallel, vec![A]);
        assert_eq!(serial, vec![C]);
        for (bad, why) in [
            (format!("pass\t{A}"), "line 1: want"),
            (format!("pass\tbecause\t{A}"), "reason '-'"),
            (format!("fail\t-\t{A}"), "needs a reason"),
            (format!("maybe\tx\t{A}"), "unknown status"),
            (
                "pass\t-\t[sig-x] not one".to_string(),
                "not a [Conformance] spec",
            ),
            (format!("pass\t-\t{A}\nskip\tx\t{A}"), "line 2: "),
        ] {
            let e = SpecList::parse(&bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn focus_matches_exactly_the_specs() {
        let f = focus(&[A, B]);
        assert!(f.starts_with("(?:") && f.ends_with(")$"));
        assert!(
            f.contains(r"\[sig-apps\]\s+Deployment\s+should\s+roll\s+\(1\.2\)\s+\[Conformance\]")
        );
        assert!(f.contains('|'));
    }

    #[test]
    fn a_run_as_listed_holds() {
        // The suite's names may carry double spaces; the list's do not.
        let a_as_run = A.replace(" [Conformance]", "  [Conformance]");
        let o = outcome(&[
            junit(&[(&a_as_run, "pass"), (B, "skip")]),
            junit(&[(C, "timed out"), (A, "skip")]),
        ]);
        assert_eq!(o.passed, [A.to_string()].into());
        assert_eq!(o.failed[C], "Dec 1 16:00:17.960: timed out");
        assert_eq!(o.suite.len(), 3);
        assert_eq!(verdict(&list(), &o), Vec::<String>::new());
    }

    #[test]
    fn a_failing_pass_spec_and_a_newly_passing_fail_spec_are_named() {
        let o = outcome(&[junit(&[(A, "boom"), (B, "skip"), (C, "pass")])]);
        let v = verdict(&list(), &o);
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(
            v[0].starts_with("FAILED (expected to pass)") && v[0].contains("boom"),
            "{v:?}"
        );
        assert!(
            v[1].starts_with("newly passes") && v[1].contains(C),
            "{v:?}"
        );
    }

    #[test]
    fn unlisted_missing_not_run_and_suite_failures_are_named() {
        let extra = "[sig-new] something [Conformance]";
        let o = outcome(&[junit(&[
            (A, "skip"),
            (C, "skip"),
            (extra, "skip"),
            ("[SynchronizedBeforeSuite]", "nodes never ready"),
        ])]);
        let v = verdict(&list(), &o);
        let all = v.join("\n");
        assert!(
            all.contains("suite setup failed: [SynchronizedBeforeSuite]: Dec 1 16:00:17.960: nodes never ready"),
            "{all}"
        );
        assert!(all.contains(&format!("does not name: {extra}")), "{all}");
        assert!(all.contains(&format!("does not have: {B}")), "{all}");
        assert!(
            all.contains(&format!("did not run (expected to pass): {A}")),
            "{all}"
        );
        assert!(
            all.contains(&format!("did not run (listed as failing): {C}")),
            "{all}"
        );
        assert_eq!(v.len(), 5, "{all}");
    }

    #[test]
    fn a_spec_that_passes_when_rerun_counts_as_flaked_and_one_that_fails_again_does_not() {
        let d = "[sig-d] Other [Conformance]";
        let l = SpecList::parse(&format!("pass\t-\t{A}\npass\t-\t{d}\nfail\tx\t{C}\n")).unwrap();
        let mut o = outcome(&[junit(&[(A, "slow eviction"), (d, "boom")])]);
        o.merge(outcome(&[junit(&[(C, "x"), (A, "skip"), (d, "skip")])]));
        assert_eq!(o.failed.len(), 3);
        // Only the specs listed `pass` are worth a rerun, and not too many.
        let mut again = o.to_rerun(&l, 3);
        again.sort();
        assert_eq!(again, vec![A.to_string(), d.to_string()]);
        assert!(o.to_rerun(&l, 1).is_empty());
        o.rerun(&outcome(&[junit(&[(A, "pass"), (d, "boom twice")])]));
        assert!(o.passed.contains(A));
        assert_eq!(o.flaked[A], "Dec 1 16:00:17.960: slow eviction");
        let v = verdict(&l, &o);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].contains(d)
                && v[0].contains("boom (and again when rerun: Dec 1 16:00:17.960: boom twice)"),
            "{v:?}"
        );
        // A failed suite node is no flake: nothing is rerun.
        let broken = outcome(&[junit(&[(A, "x"), ("[SynchronizedBeforeSuite]", "down")])]);
        assert!(broken.to_rerun(&l, 3).is_empty());
    }

    #[test]
    fn a_skip_spec_that_ran_is_named() {
        let o = outcome(&[junit(&[(A, "pass"), (B, "pass"), (C, "x")])]);
        let v = verdict(&list(), &o);
        assert_eq!(v, vec![format!("ran although listed as skip: {B}")]);
    }
}
