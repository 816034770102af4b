//! Evaluation plans: the policies of one event type (or of every type) over the set's shared rule graph, with the
//! rules that can be decided together grouped in batches.
//!
//! A batch is the rules on one field that one look at the event's value decides at once:
//! - thresholds (`gt`, `gte`, `lt`, `lte`) of one operator, sorted, so one binary search decides all of them;
//! - equality rules (`eq`, `in`) or their negations (`ne`, `not_in`) on numbers and text, as a hash table from the
//!   value to the rules it satisfies, so one lookup decides all of them;
//! - regular expressions of one case folding, as one `RegexSet`, so one scan decides all of them;
//! - `exists` rules on fields of one object (`data.a`, `data.b`, ...), by one pass over that object (or one lookup
//!   per rule, whichever is shorter).
//!
//! - `contains` rules on one field, by one pass over the event's array (a hash lookup per element) or over the
//!   rules' substrings when the value is text.
//!
//! Every rule has a slot in the per-event memo, and a batch's rules have consecutive slots, so deciding a batch is
//! filling a slice of the memo. Batches are decided lazily, the first time a policy needs one of their rules, and
//! groups try their batched rules first: a policy whose cheapest necessary rule fails costs a memo read or two.
//! Other rules (a lone regex, JSON operands) are decided one by one, each distinct rule at most once per event.
//!
//! Each policy's condition is a short run of code (one word per rule, one per group), and the policies' runs lie
//! one after another in one array. Evaluating a plan therefore reads memory front to back: a tenant's plan is
//! usually cold in the cache when its next event comes, and the rule trees behind pointers that this replaces
//! cost a cache miss per node.

use super::{fold, rule, rule_cost, text_contains, Operand, Operator, Path, SharedNode};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// Memo values: not yet evaluated, false, true.
const UNKNOWN: u8 = 0;
const NO: u8 = 1;
const YES: u8 = 2;

#[derive(Debug, Clone, Default)]
pub(super) struct Plan {
    /// The set's index of each policy evaluated, in order, and where its condition starts in `code`.
    policies: Vec<(u32, u32)>,
    /// The conditions: a rule is its slot number; a group is a header word ([`GROUP`], [`ALL`] and the length of
    /// its children's code), then its children.
    code: Vec<u32>,
    /// What decides each slot.
    slots: Vec<Slot>,
    rules: Vec<Single>,
    paths: Vec<Path>,
    batches: Vec<Batch>,
}

const GROUP: u32 = 1 << 31;
const ALL: u32 = 1 << 30;
const LEN: u32 = ALL - 1;

#[derive(Debug, Clone, Copy)]
enum Slot {
    /// Decided by batch `.0`, together with the batch's other rules.
    Batched(u32),
    /// Rule `.0` of `rules`, decided on its own.
    Single(u32),
}

/// A rule decided on its own.
#[derive(Debug, Clone)]
struct Single {
    path: u32,
    op: Operator,
    operand: Operand,
    case_sensitive: bool,
}

#[derive(Debug, Clone)]
struct Batch {
    path: u32,
    /// The batch's slots are `start..start + len`.
    start: u32,
    len: u32,
    kind: BatchKind,
}

#[derive(Debug, Clone)]
enum BatchKind {
    /// Ascending; slot `start + i` compares with `thresholds[i]`.
    Threshold { op: Operator, thresholds: Vec<f64> },
    /// The members a value satisfies; `negated`: the rules are `ne` / `not_in`, so those members fail.
    Equality { negated: bool, equals: Equals },
    /// Pattern `i` is slot `start + i`.
    Patterns(regex::RegexSet),
    /// `path` is the parent object; member `i` (slot `start + i`) is its field `fields[i]` (or element, when the
    /// parent is an array); `offsets` maps a field name to the members that test it.
    Exists { fields: Vec<(String, Option<usize>)>, offsets: HashMap<String, Vec<u32>> },
    /// Member `i` (slot `start + i`) looks for `operands[i]` (a substring of a text value, or an element of an
    /// array); `elements` maps an array element to the members that look for it.
    Contains { operands: Vec<(Operand, bool)>, elements: Equals },
}

/// Which members an event's number or text satisfies by equality.
#[derive(Debug, Clone, Default)]
struct Equals {
    numbers: HashMap<u64, Vec<u32>>,
    /// Case-sensitive members.
    texts: HashMap<String, Vec<u32>>,
    /// Case-insensitive members, by folded text.
    folded: HashMap<String, Vec<u32>>,
}

impl Equals {
    fn add(&mut self, o: &Operand, case_sensitive: bool, member: u32) -> Option<()> {
        let list = match o {
            Operand::Number(x) => self.numbers.entry(number_key(*x)).or_default(),
            Operand::Text(t) if case_sensitive => self.texts.entry(t.clone()).or_default(),
            Operand::Text(t) => self.folded.entry(t.clone()).or_default(),
            _ => return None,
        };
        list.push(member);
        Some(())
    }

    /// Calls `hit` with each member that `v` equals.
    fn each(&self, v: &Value, mut hit: impl FnMut(u32)) {
        let mut all = |members: Option<&Vec<u32>>| members.into_iter().flatten().for_each(|m| hit(*m));
        match v {
            Value::Number(n) => all(n.as_f64().and_then(|x| self.numbers.get(&number_key(x)))),
            Value::String(s) => {
                all(self.texts.get(s.as_str()));
                if !self.folded.is_empty() {
                    all(self.folded.get(fold(s).as_ref()));
                }
            }
            // Null, booleans, arrays and objects equal no number or text.
            _ => {}
        }
    }
}

/// The key of a number in an equality table: `0.0` and `-0.0` are one value, as `==` has it.
fn number_key(x: f64) -> u64 {
    if x == 0.0 {
        0
    } else {
        x.to_bits()
    }
}

/// How a rule can be batched, and with which others (same path, same class).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Threshold(Operator),
    Equality {
        negated: bool,
    },
    Pattern {
        case_sensitive: bool,
    },
    /// Batched by the parent of the field, not the field.
    Exists,
    Contains,
}

fn class(op: Operator, operand: &Operand, case_sensitive: bool) -> Option<Class> {
    let scalar = |o: &Operand| matches!(o, Operand::Number(_) | Operand::Text(_));
    match (op, operand) {
        (Operator::Gt | Operator::Gte | Operator::Lt | Operator::Lte, Operand::Number(_)) => Some(Class::Threshold(op)),
        (Operator::Eq, o) if scalar(o) => Some(Class::Equality { negated: false }),
        (Operator::Ne, o) if scalar(o) => Some(Class::Equality { negated: true }),
        (Operator::In, Operand::List(l)) if l.iter().all(scalar) => Some(Class::Equality { negated: false }),
        (Operator::NotIn, Operand::List(l)) if l.iter().all(scalar) => Some(Class::Equality { negated: true }),
        (Operator::Regex, Operand::Pattern(_)) => Some(Class::Pattern { case_sensitive }),
        (Operator::Exists, _) => Some(Class::Exists),
        (Operator::Contains, o) if scalar(o) => Some(Class::Contains),
        _ => None,
    }
}

/// The operand values of an equality rule.
fn scalars(operand: &Operand) -> &[Operand] {
    match operand {
        Operand::List(l) => l,
        o => std::slice::from_ref(o),
    }
}

impl Plan {
    /// The plan for `policies` (set index, root node in `nodes`), over the part of `nodes` they reach.
    pub(super) fn new(policies: Vec<(usize, usize)>, nodes: &[SharedNode], paths: &[Path]) -> Self {
        // The reachable nodes, children before parents.
        let mut order = Vec::new();
        let mut seen = vec![false; nodes.len()];
        fn visit(id: usize, nodes: &[SharedNode], seen: &mut [bool], order: &mut Vec<usize>) {
            if std::mem::replace(&mut seen[id], true) {
                return;
            }
            if let SharedNode::Group { children, .. } = &nodes[id] {
                for c in children {
                    visit(*c, nodes, seen, order);
                }
            }
            order.push(id);
        }
        for (_, root) in &policies {
            visit(*root, nodes, &mut seen, &mut order);
        }

        // Batches: rules of one path (for `exists`, one parent) and one class; a lone pattern is not worth a set.
        let mut classes: BTreeMap<(String, Class), Vec<usize>> = BTreeMap::new();
        let mut batch_paths: HashMap<String, Path> = HashMap::new();
        for &id in &order {
            if let SharedNode::Rule { path, op, operand, case_sensitive } = &nodes[id] {
                if let Some(c) = class(*op, operand, *case_sensitive) {
                    let segments = &paths[*path].segments;
                    let on = if c == Class::Exists { &segments[..segments.len() - 1] } else { &segments[..] };
                    let on = Path { segments: on.to_vec() };
                    let key = on.key();
                    batch_paths.entry(key.clone()).or_insert(on);
                    classes.entry((key, c)).or_default().push(id);
                }
            }
        }
        classes.retain(|(_, c), members| !matches!(c, Class::Pattern { .. }) || members.len() > 1);

        let mut plan = Plan::default();
        let mut path_ids: HashMap<String, u32> = HashMap::new();
        let mut path_id = |plan: &mut Plan, path: &Path| -> u32 {
            *path_ids.entry(path.key()).or_insert_with(|| {
                plan.paths.push(path.clone());
                (plan.paths.len() - 1) as u32
            })
        };
        // The slot of each rule node.
        let mut slot: HashMap<usize, u32> = HashMap::with_capacity(order.len());
        for ((on, class), mut members) in classes {
            if let Class::Threshold(_) = class {
                let threshold = |id: &usize| match &nodes[*id] {
                    SharedNode::Rule { operand: Operand::Number(x), .. } => *x,
                    _ => f64::NAN,
                };
                members.sort_by(|a, b| threshold(a).total_cmp(&threshold(b)));
            }
            let Some(kind) = Self::batch_kind(class, &members, nodes, paths) else { continue };
            let (start, batch) = (plan.slots.len() as u32, plan.batches.len() as u32);
            for id in &members {
                slot.insert(*id, plan.slots.len() as u32);
                plan.slots.push(Slot::Batched(batch));
            }
            let path = path_id(&mut plan, &batch_paths[&on]);
            plan.batches.push(Batch { path, start, len: members.len() as u32, kind });
        }
        // The other rules, and every node's cost (children before parents, so theirs are known).
        let mut cost = vec![0u32; nodes.len()];
        for &id in &order {
            cost[id] = match &nodes[id] {
                SharedNode::Rule { path, op, operand, case_sensitive } => {
                    if let std::collections::hash_map::Entry::Vacant(free) = slot.entry(id) {
                        free.insert(plan.slots.len() as u32);
                        let path = path_id(&mut plan, &paths[*path]);
                        let single =
                            Single { path, op: *op, operand: operand.clone(), case_sensitive: *case_sensitive };
                        plan.slots.push(Slot::Single(plan.rules.len() as u32));
                        plan.rules.push(single);
                        1 + rule_cost(*op, operand, *case_sensitive)
                    } else {
                        1
                    }
                }
                SharedNode::Group { children, .. } => children.iter().map(|c| cost[*c]).sum::<u32>() + 1,
            };
        }
        for (i, root) in policies {
            let at = plan.code.len() as u32;
            plan.emit(root, nodes, &slot, &cost);
            plan.policies.push((i as u32, at));
        }
        plan
    }

    /// Appends the code of node `id`: a group's children cheapest first, so that AND and OR groups stop early
    /// (verdicts do not depend on the order).
    fn emit(&mut self, id: usize, nodes: &[SharedNode], slot: &HashMap<usize, u32>, cost: &[u32]) {
        match &nodes[id] {
            SharedNode::Rule { .. } => self.code.push(slot[&id]),
            SharedNode::Group { all, children } => {
                let header = self.code.len();
                self.code.push(0);
                let mut children = children.clone();
                children.sort_by_key(|c| cost[*c]);
                for c in children {
                    self.emit(c, nodes, slot, cost);
                }
                let len = (self.code.len() - header - 1) as u32;
                self.code[header] = GROUP | if *all { ALL } else { 0 } | len;
            }
        }
    }

    fn batch_kind(class: Class, members: &[usize], nodes: &[SharedNode], paths: &[Path]) -> Option<BatchKind> {
        let rule = |id: usize| match &nodes[id] {
            SharedNode::Rule { path, op, operand, case_sensitive } => Some((*path, *op, operand, *case_sensitive)),
            SharedNode::Group { .. } => None,
        };
        Some(match class {
            Class::Threshold(op) => {
                let thresholds = members
                    .iter()
                    .map(|id| match rule(*id) {
                        Some((_, _, Operand::Number(x), _)) => Some(*x),
                        _ => None,
                    })
                    .collect::<Option<Vec<f64>>>()?;
                BatchKind::Threshold { op, thresholds }
            }
            Class::Equality { negated } => {
                let mut equals = Equals::default();
                for (member, id) in members.iter().enumerate() {
                    let (_, _, operand, case_sensitive) = rule(*id)?;
                    for o in scalars(operand) {
                        equals.add(o, case_sensitive, member as u32)?;
                    }
                }
                BatchKind::Equality { negated, equals }
            }
            Class::Pattern { case_sensitive } => {
                let patterns = members
                    .iter()
                    .map(|id| match rule(*id) {
                        Some((_, _, Operand::Pattern(re), _)) => Some(re.as_str().to_string()),
                        _ => None,
                    })
                    .collect::<Option<Vec<String>>>()?;
                // Each pattern alone was bounded by `1 << 20` when compiled; the set gets the sum. A set that
                // cannot be built leaves its rules to be decided one by one.
                let limit = (patterns.len() << 20).min(1 << 28);
                let set = regex::RegexSetBuilder::new(&patterns)
                    .case_insensitive(!case_sensitive)
                    .size_limit(limit)
                    .build()
                    .ok()?;
                BatchKind::Patterns(set)
            }
            Class::Exists => {
                let mut fields = Vec::with_capacity(members.len());
                let mut offsets: HashMap<String, Vec<u32>> = HashMap::new();
                for (member, id) in members.iter().enumerate() {
                    let field = paths[rule(*id)?.0].segments.last()?.clone();
                    offsets.entry(field.clone()).or_default().push(member as u32);
                    let index = field.parse::<usize>().ok();
                    fields.push((field, index));
                }
                BatchKind::Exists { fields, offsets }
            }
            Class::Contains => {
                let (mut operands, mut elements) = (Vec::with_capacity(members.len()), Equals::default());
                for (member, id) in members.iter().enumerate() {
                    let (_, _, operand, case_sensitive) = rule(*id)?;
                    elements.add(operand, case_sensitive, member as u32)?;
                    operands.push((operand.clone(), case_sensitive));
                }
                BatchKind::Contains { operands, elements }
            }
        })
    }

    /// The set's indexes of the policies the event matches, in order.
    pub(super) fn matching<'a>(&'a self, event: &'a Value) -> impl Iterator<Item = usize> + 'a {
        let mut memo = Memo { slots: vec![UNKNOWN; self.slots.len()], paths: vec![None; self.paths.len()] };
        self.policies.iter().filter_map(move |&(i, at)| self.run(at as usize, event, &mut memo).then_some(i as usize))
    }

    /// The verdict of the code at `at`.
    fn run<'e>(&self, at: usize, e: &'e Value, memo: &mut Memo<'e>) -> bool {
        let word = self.code[at];
        if word & GROUP == 0 {
            return self.slot(word, e, memo);
        }
        // AND stops at the first false child, OR at the first true one.
        let all = word & ALL != 0;
        let end = at + 1 + (word & LEN) as usize;
        let mut child = at + 1;
        while child < end {
            let w = self.code[child];
            let (verdict, len) = if w & GROUP == 0 {
                (self.slot(w, e, memo), 1)
            } else {
                (self.run(child, e, memo), 1 + (w & LEN) as usize)
            };
            if verdict != all {
                return verdict;
            }
            child += len;
        }
        all
    }

    fn slot<'e>(&self, slot: u32, e: &'e Value, memo: &mut Memo<'e>) -> bool {
        match memo.slots[slot as usize] {
            NO => false,
            YES => true,
            _ => {
                match self.slots[slot as usize] {
                    Slot::Batched(b) => self.decide_batch(&self.batches[b as usize], e, memo),
                    Slot::Single(r) => {
                        let Single { path, op, operand, case_sensitive } = &self.rules[r as usize];
                        let verdict = rule(memo.value(&self.paths, *path, e), *op, operand, *case_sensitive);
                        memo.slots[slot as usize] = if verdict { YES } else { NO };
                    }
                }
                memo.slots[slot as usize] == YES
            }
        }
    }

    /// Decides every rule of the batch, from one look at the value.
    fn decide_batch<'e>(&self, b: &Batch, e: &'e Value, memo: &mut Memo<'e>) {
        let v = memo.value(&self.paths, b.path, e);
        let out = &mut memo.slots[b.start as usize..(b.start + b.len) as usize];
        match &b.kind {
            BatchKind::Threshold { op, thresholds } => {
                out.fill(NO);
                // A missing field or one that is not a number fails every comparison.
                let Some(x) = v.and_then(Value::as_f64) else { return };
                // Ascending thresholds: `gt`/`gte` hold for a prefix, `lt`/`lte` for a suffix.
                let (prefix, split) = match op {
                    Operator::Gt => (true, thresholds.partition_point(|t| *t < x)),
                    Operator::Gte => (true, thresholds.partition_point(|t| *t <= x)),
                    Operator::Lt => (false, thresholds.partition_point(|t| *t <= x)),
                    _ => (false, thresholds.partition_point(|t| *t < x)),
                };
                if prefix {
                    out[..split].fill(YES);
                } else {
                    out[split..].fill(YES);
                }
            }
            BatchKind::Equality { negated, equals } => {
                let (hit, miss) = if *negated { (NO, YES) } else { (YES, NO) };
                out.fill(miss);
                // A missing field equals nothing.
                if let Some(v) = v {
                    equals.each(v, |m| out[m as usize] = hit);
                }
            }
            BatchKind::Patterns(set) => {
                out.fill(NO);
                if let Some(s) = v.and_then(Value::as_str) {
                    for i in set.matches(s).iter() {
                        out[i] = YES;
                    }
                }
            }
            BatchKind::Exists { fields, offsets } => {
                out.fill(NO);
                // A field that is present and not null exists.
                match v {
                    Some(Value::Object(m)) if m.len() < fields.len() => {
                        for (k, _) in m.iter().filter(|(_, v)| !v.is_null()) {
                            for o in offsets.get(k.as_str()).into_iter().flatten() {
                                out[*o as usize] = YES;
                            }
                        }
                    }
                    Some(Value::Object(m)) => {
                        for (o, (k, _)) in fields.iter().enumerate() {
                            if m.get(k).is_some_and(|v| !v.is_null()) {
                                out[o] = YES;
                            }
                        }
                    }
                    Some(Value::Array(a)) => {
                        for (o, (_, i)) in fields.iter().enumerate() {
                            if i.and_then(|i| a.get(i)).is_some_and(|v| !v.is_null()) {
                                out[o] = YES;
                            }
                        }
                    }
                    _ => {}
                }
            }
            BatchKind::Contains { operands, elements } => {
                out.fill(NO);
                match v {
                    Some(Value::String(s)) => {
                        for (o, (operand, case_sensitive)) in operands.iter().enumerate() {
                            if let Operand::Text(t) = operand {
                                if text_contains(s, t, *case_sensitive) {
                                    out[o] = YES;
                                }
                            }
                        }
                    }
                    Some(Value::Array(a)) => {
                        for x in a {
                            elements.each(x, |m| out[m as usize] = YES);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The per-event memo of a plan: each slot's verdict and each path's value, once known.
struct Memo<'e> {
    slots: Vec<u8>,
    paths: Vec<Option<Option<&'e Value>>>,
}

impl<'e> Memo<'e> {
    fn value(&mut self, paths: &[Path], path: u32, e: &'e Value) -> Option<&'e Value> {
        *self.paths[path as usize].get_or_insert_with(|| paths[path as usize].get(e))
    }
}
