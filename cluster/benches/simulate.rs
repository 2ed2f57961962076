//! How long one scale-up decision takes on large clusters, and how close
//! its node count comes to the lower bound: (a) 10,000 pending pods in
//! about 100 equivalence classes over 1,000 mostly full nodes and 10
//! pools, (b) the same with 40,000 pending pods.
//!
//! `cargo bench -p kubeforge-cluster --bench simulate` prints medians over
//! several runs. Under `cargo test` (no `--bench` argument) it runs each
//! scenario once at a twentieth of the size, so it stays compiled and
//! working. Inputs come from a fixed seed: every run simulates the same
//! cluster.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kubeforge_cluster::simulate::{
    classes, pod_request, scale_up, template_node, AntiAffinityTerm, EquivalenceClass,
    ExistingNode, LabelSelector, NodeShape, NodeState, PodShape, PoolOption, Resources,
    ScaleUpSettings, TermNamespaces, Toleration, TolerationOperator,
};
use kubeforge_cluster::{NodePoolName, Taint, TaintEffect};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const GPU: &str = "nvidia.com/gpu";
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// A request of CPU, memory and GPUs (no pod slot).
fn resources(cpu: u64, mem: u64, gpu: u64) -> Resources {
    let mut r = Resources {
        cpu_millis: cpu,
        memory_bytes: mem,
        ephemeral_bytes: 0,
        pods: 0,
        extended: BTreeMap::new(),
    };
    if gpu > 0 {
        r.extended.insert(GPU.into(), gpu);
    }
    r
}

/// Ten pools: general ones of 4 to 32 CPUs, a zone-b pool, a GPU pool
/// (tainted), a memory-heavy one. Some are at size zero.
/// A node's capacity: CPU, memory, GPUs and 110 pods.
fn capacity(cpu: u64, mem: u64, gpu: u64) -> Resources {
    Resources {
        pods: 110,
        ..resources(cpu, mem, gpu)
    }
}

fn pools() -> Vec<PoolOption> {
    let daemonsets = [
        pod_request(&[resources(100, 128 * MIB, 0)], &[], &Resources::default()),
        pod_request(&[resources(50, 64 * MIB, 0)], &[], &Resources::default()),
    ];
    // Name, CPU (millicores), memory (GiB), GPUs, labels, GPU-tainted.
    type Spec<'a> = (&'a str, u64, u64, u64, &'a [(&'a str, &'a str)], bool);
    let spec: [Spec; 10] = [
        ("general-4", 4000, 16, 0, &[], false),
        ("general-8", 8000, 32, 0, &[], false),
        ("general-16", 16000, 64, 0, &[], false),
        ("general-32", 32000, 128, 0, &[], false),
        ("compute-16", 16000, 32, 0, &[], false),
        ("memory-8", 8000, 64, 0, &[], false),
        ("zone-b-8", 8000, 32, 0, &[("zone", "b")], false),
        ("zone-b-16", 16000, 64, 0, &[("zone", "b")], false),
        ("gpu-16", 16000, 64, 4, &[], true),
        ("spot-8", 8000, 32, 0, &[("lifecycle", "spot")], false),
    ];
    spec.iter()
        .enumerate()
        .map(|(i, (name, cpu, mem, gpu, labels, tainted))| {
            let labels: BTreeMap<String, String> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let taints = if *tainted {
                vec![Taint {
                    key: GPU.into(),
                    value: None,
                    effect: TaintEffect::NoSchedule,
                }]
            } else {
                vec![]
            };
            PoolOption {
                pool: name.to_string(),
                template: template_node(
                    &capacity(*cpu, mem * GIB, *gpu),
                    &resources(100, 512 * MIB, 0),
                    &daemonsets,
                    &NodePoolName::parse(name).expect("pool names are valid"),
                    &labels,
                    &taints,
                ),
                size: (i % 3) as u32,
                max: 5000,
                priority: 0,
                vcpus: (*cpu / 1000) as u32,
                excluded: None,
            }
        })
        .collect()
}

/// About 100 pod kinds: mostly plain web and worker pods, some pinned to
/// zone b, some on GPUs, a few spread one per node by anti-affinity.
fn kinds(rng: &mut StdRng) -> Vec<PodShape> {
    (0..100)
        .map(|i| {
            let cpu = [100, 250, 500, 750, 1000, 2000][rng.gen_range(0..6)];
            let mem = rng.gen_range(1..=16) * 128 * MIB;
            let mut s = PodShape {
                request: pod_request(&[resources(cpu, mem, 0)], &[], &Resources::default()),
                namespace: format!("team-{}", i % 7),
                ..Default::default()
            };
            s.labels.insert("app".into(), format!("app-{i}"));
            match i % 20 {
                0 | 1 => {
                    s.node_selector.insert("zone".into(), "b".into());
                }
                2 => {
                    s.request.extended.insert(GPU.into(), 1);
                    s.tolerations.push(Toleration {
                        key: Some(GPU.into()),
                        operator: TolerationOperator::Exists,
                        value: None,
                        effect: None,
                    });
                }
                3 if i < 40 => s.anti_affinity.push(AntiAffinityTerm {
                    selector: LabelSelector {
                        match_labels: s.labels.clone(),
                        match_expressions: vec![],
                    },
                    namespaces: TermNamespaces::Own,
                }),
                _ => {}
            }
            s
        })
        .collect()
}

struct Scenario {
    pods: Vec<(String, PodShape)>,
    existing: Vec<ExistingNode>,
    pools: Vec<PoolOption>,
}

fn scenario(seed: u64, pending: usize, nodes: usize) -> Scenario {
    let mut rng = StdRng::seed_from_u64(seed);
    let kinds = kinds(&mut rng);
    let pods = (0..pending)
        .map(|i| {
            let k = rng.gen_range(0..kinds.len());
            (format!("{}/pod-{i}", kinds[k].namespace), kinds[k].clone())
        })
        .collect();
    let existing = (0..nodes)
        .map(|i| {
            let shape = NodeShape {
                allocatable: capacity(8000, 32 * GIB, 0),
                labels: BTreeMap::from([("zone".to_string(), "a".to_string())]),
                taints: vec![],
            };
            // Mostly full: 85% to 100% of CPU and memory requested.
            let mut state = NodeState::with_used(Resources {
                cpu_millis: rng.gen_range(6800..=8000),
                memory_bytes: rng.gen_range(27 * GIB..=32 * GIB),
                pods: rng.gen_range(10..40),
                ..Default::default()
            });
            state.place(&kinds[(i * 7) % kinds.len()], 1);
            ExistingNode {
                name: format!("node-{i}"),
                shape,
                state,
            }
        })
        .collect();
    Scenario {
        pods,
        existing,
        pools: pools(),
    }
}

/// Nodes the new pods need at the least: per pool chosen, the pods it
/// takes, their total request over the template's allocatable, resource
/// by resource, the largest, rounded up.
fn lower_bound(
    pending: &[EquivalenceClass],
    plan_pools: &[(String, Vec<(usize, u64)>)],
    pools: &[PoolOption],
) -> u64 {
    let mut bound = 0;
    for (pool, taken) in plan_pools {
        let template = &pools
            .iter()
            .find(|p| &p.pool == pool)
            .expect("chosen pools exist")
            .template;
        let mut want = Resources::default();
        for &(c, n) in taken {
            want.add_copies(&pending[c].shape.request, n);
        }
        let a = &template.allocatable;
        let mut need = [
            want.cpu_millis.div_ceil(a.cpu_millis.max(1)),
            want.memory_bytes.div_ceil(a.memory_bytes.max(1)),
            want.pods.div_ceil(a.pods.max(1)),
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        for (k, v) in &want.extended {
            need = need.max(v.div_ceil(a.extended.get(k).copied().unwrap_or(1).max(1)));
        }
        // Pods that go one per node need a node each.
        for &(c, n) in taken {
            if pending[c].shape.one_per_node() {
                need = need.max(n);
            }
        }
        bound += need;
    }
    bound
}

fn stats(mut d: Vec<Duration>) -> (Duration, Duration, Duration) {
    d.sort();
    (d[d.len() / 2], d[0], d[d.len() - 1])
}

fn run(label: &str, s: &Scenario, runs: usize) {
    let settings = ScaleUpSettings {
        max_nodes_per_scale_up: 100_000,
        ..Default::default()
    };
    let mut grouping = Vec::new();
    let mut deciding = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let pods = s.pods.clone();
        let t = Instant::now();
        let pending = classes(pods);
        grouping.push(t.elapsed());
        let mut existing = s.existing.clone();
        let t = Instant::now();
        let plan = scale_up(&pending, &mut existing, &s.pools, &settings);
        deciding.push(t.elapsed());
        last = Some((pending, plan));
    }
    let (pending, plan) = last.expect("at least one run");
    let on_existing: u64 = plan
        .classes
        .iter()
        .flat_map(|c| &c.existing)
        .map(|e| e.pods)
        .sum();
    let unplaced: u64 = plan.classes.iter().map(|c| c.unplaced).sum();
    let per_pool: Vec<(String, Vec<(usize, u64)>)> = plan
        .grow
        .iter()
        .map(|g| {
            (
                g.pool.clone(),
                g.packing.iter().flatten().copied().collect(),
            )
        })
        .collect();
    let bound = lower_bound(&pending, &per_pool, &s.pools);
    let nodes = plan.nodes_added() as u64;
    let (g_med, g_min, g_max) = stats(grouping);
    let (d_med, d_min, d_max) = stats(deciding);
    println!(
        "{label}: {} pending pods in {} classes, {} existing nodes, {} pools",
        s.pods.len(),
        pending.len(),
        s.existing.len(),
        s.pools.len()
    );
    println!(
        "  classes():  median {g_med:.1?} (min {g_min:.1?}, max {g_max:.1?}) over {runs} runs"
    );
    println!(
        "  scale_up(): median {d_med:.1?} (min {d_min:.1?}, max {d_max:.1?}) over {runs} runs"
    );
    println!(
        "  pods on existing nodes {on_existing}, on new nodes {}, left pending {unplaced}",
        s.pods.len() as u64 - on_existing - unplaced
    );
    let chosen: Vec<String> = plan
        .grow
        .iter()
        .map(|g| format!("{} +{}", g.pool, g.nodes))
        .collect();
    println!(
        "  nodes chosen {nodes} ({}); lower bound {bound}; ratio {:.3}",
        chosen.join(", "),
        nodes as f64 / bound.max(1) as f64
    );
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (scale, runs) = if bench { (1, 7) } else { (20, 1) };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    println!(
        "machine: {cores} cores, {cpu}; {} build",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    run("(a)", &scenario(1, 10_000 / scale, 1_000 / scale), runs);
    run("(b)", &scenario(2, 40_000 / scale, 1_000 / scale), runs);
}
