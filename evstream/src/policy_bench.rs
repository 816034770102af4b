//! `evstream policy-bench`: policy evaluation throughput on pre-built events, 100 tenants x 1,000 policies by
//! default, on one core (the alert stream evaluates on the consumer's task). Prints events/s and policy
//! evaluations/s, with the CPU time actually used.

use clap::Args;
use schemas::policy::{AlertPolicy, CompiledPolicy, PolicySet};
use schemas::EventType;
use serde_json::{json, Value};
use std::time::Instant;

#[derive(Args, Debug, Clone)]
pub struct PolicyBenchArgs {
    #[arg(long, default_value_t = 100)]
    pub tenants: usize,
    #[arg(long, default_value_t = 1000)]
    pub policies: usize,
    /// Events evaluated (spread over the tenants).
    #[arg(long, default_value_t = 200_000)]
    pub events: usize,
    /// Make every rule of every policy distinct (its own threshold, substring and pattern), so policies share no
    /// rule: the worst case for the shared evaluation.
    #[arg(long)]
    pub unique: bool,
    /// Passes over the events with the plans; the median pass is reported (the first one also warms the pattern
    /// sets' lazily built automata).
    #[arg(long, default_value_t = 3)]
    pub passes: usize,
    /// Skip the one-policy-at-a-time reference evaluation (for profiling the plans alone).
    #[arg(long)]
    pub no_reference: bool,
}

/// A deterministic policy mixing every operator, nested groups and case folding.
fn policy(i: usize, unique: bool) -> AlertPolicy {
    let types = EventType::ALL;
    let t1 = types[i % types.len()];
    let t2 = types[(i * 7 + 3) % types.len()];
    // In unique mode each rule carries the policy's number: no two policies share a rule.
    let u = |base: &str| if unique { format!("{base}|u{i}") } else { base.to_string() };
    let rule = |k: usize| -> Value {
        match k % 8 {
            0 if unique => json!({"field": "data.riskScore", "operator": "gte", "value": 50.0 + i as f64 / 1000.0}),
            0 => json!({"field": "data.riskScore", "operator": "gte", "value": 50 + (i % 50)}),
            1 => json!({"field": "source", "operator": "in", "value": ["AWS", "GCP", "ARCHER_GRC", u("X")]}),
            2 if unique => {
                json!({"field": "data.owner", "operator": "contains", "value": format!("ops{}", "\u{b7}".repeat(i % 3)), "caseSensitive": false})
            }
            2 => json!({"field": "data.owner", "operator": "contains", "value": "ops", "caseSensitive": false}),
            3 => json!({"field": "metadata.region", "operator": "regex", "value": u("^eu-(west|central)-[0-9]$")}),
            4 => json!({"field": "data.status", "operator": "ne", "value": u("closed")}),
            5 => json!({"field": if unique { format!("data.f{i}") } else { "entityId".into() }, "operator": "exists"}),
            6 => {
                json!({"field": "data.value", "operator": "lt", "value": if unique { 90.0 + i as f64 / 1000.0 } else { 90.5 }})
            }
            _ => json!({"field": "data.tags", "operator": "contains", "value": u("pci")}),
        }
    };
    let doc = json!({
        "name": format!("policy {i}"), "severity": "high", "eventTypes": [t1, t2],
        "condition": {"matchAll": true, "rules": [rule(i), rule(i + 1), {"matchAll": false, "rules": [rule(i + 2), rule(i + 3)]}]},
        "groupBy": ["entityId"]
    });
    AlertPolicy::from_json(doc).unwrap_or_else(|e| panic!("bench policy {i} invalid: {e:?}"))
}

fn event(i: usize, tenant: usize) -> Value {
    let types = EventType::ALL;
    let source = ["AWS", "GCP", "FRONTEND_APP", "ARCHER_GRC"][i % 4];
    let owner = ["SecOps", "FinOps", "dev"][i % 3];
    let status = ["open", "closed"][i % 2];
    let region = ["eu-west-1", "us-east-1", "eu-central-2"][i % 3];
    json!({"id": format!("e{i}"), "tenantId": format!("t{tenant}"), "eventType": types[i % types.len()],
           "source": source, "entityId": format!("x-{}", i % 97),
           "data": {"riskScore": (i * 37) % 100, "owner": owner, "status": status,
                    "value": (i % 200) as f64 / 2.0, "tags": ["pci", "sox"]},
           "metadata": {"region": region}})
}

fn cpu_secs() -> f64 {
    std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(f64::NAN)
}

pub fn run(a: PolicyBenchArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let sets: Vec<PolicySet> = (0..a.tenants)
        .map(|t| {
            PolicySet::new(
                (0..a.policies)
                    .filter_map(|i| CompiledPolicy::compile(&format!("p{i}"), policy(i + t, a.unique)).ok())
                    .collect(),
            )
        })
        .collect();
    println!("compiled {} tenants x {} policies in {:.2} s", a.tenants, a.policies, t0.elapsed().as_secs_f64());
    let events: Vec<(usize, Value)> = (0..a.events).map(|i| (i % a.tenants, event(i, i % a.tenants))).collect();
    // Warm-up.
    let warm: usize = events.iter().take(10_000).map(|(t, e)| sets[*t].matching(e).count()).sum();
    std::hint::black_box(warm);
    // Counted outside the timed loop.
    let candidates: usize = events.iter().map(|(t, e)| sets[*t].candidates(e)).sum();
    let per_tenant = |f: fn(&PolicySet) -> usize| sets.iter().map(f).sum::<usize>() / sets.len().max(1);
    println!(
        "shared per tenant: {} distinct rules, {} distinct rules and groups (from {} policies)",
        per_tenant(PolicySet::distinct_rules),
        per_tenant(PolicySet::distinct_nodes),
        a.policies
    );
    // Matches over all events, with the wall and CPU seconds it took.
    let timed = |count: &dyn Fn(&PolicySet, &Value) -> usize| {
        let (wall, cpu) = (Instant::now(), cpu_secs());
        let matches: usize = events.iter().map(|(t, e)| count(&sets[*t], e)).sum();
        (matches, wall.elapsed().as_secs_f64(), cpu_secs() - cpu)
    };
    let mut passes: Vec<(usize, f64, f64)> =
        (0..a.passes.max(1)).map(|_| timed(&|s, e| s.matching(e).count())).collect();
    let rates: Vec<String> = passes.iter().map(|(_, _, cpu)| format!("{:.0}", a.events as f64 / cpu)).collect();
    passes.sort_by(|x, y| x.2.total_cmp(&y.2));
    let (matches, wall, cpu) = passes[passes.len() / 2];
    println!(
        "evaluated {} events: {:.0} events/s per core ({:.2} s CPU, {:.2} s wall; median of {} passes: {}), {} policies evaluated ({:.0}/s), {} matched",
        a.events,
        a.events as f64 / cpu,
        cpu,
        wall,
        passes.len(),
        rates.join(", "),
        candidates,
        candidates as f64 / cpu,
        matches
    );
    if !a.no_reference {
        // The same events, each candidate policy evaluated on its own (no shared rules or paths), in the same run.
        let (matches1, wall1, cpu1) = timed(&|s, e| s.matching_one_by_one(e).count());
        println!(
            "one policy at a time (reference): {:.0} events/s per core ({:.2} s CPU, {:.2} s wall), {} matched; shared rules are {:.1}x faster",
            a.events as f64 / cpu1,
            cpu1,
            wall1,
            matches1,
            cpu1 / cpu
        );
        anyhow::ensure!(matches1 == matches, "the two evaluations disagree: {matches1} vs {matches}");
    }
    println!("target: >= 100,000 events/s per core");
    Ok(())
}
