//! Audience resolution: an audience spec (schools, grades, roles, groups)
//! against the SIS copy gives the recipients, each with their channels and, for
//! guardians, the children the alert concerns.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::domain::{Channel, Role};
use crate::sis::normalize_grade;

/// A named distribution list from `[[groups]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub name: String,
    #[serde(default)]
    pub schools: Vec<String>,
    #[serde(default)]
    pub grades: Vec<String>,
    #[serde(default)]
    pub roles: Vec<Role>,
    #[serde(default)]
    pub classes: Vec<String>,
    /// Individual people by sourcedId.
    #[serde(default)]
    pub people: Vec<String>,
}

/// Who an alert is for. An empty list does not narrow: `{}` is everyone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AudienceSpec {
    pub schools: Vec<String>,
    pub grades: Vec<String>,
    pub roles: Vec<Role>,
    pub groups: Vec<String>,
    pub classes: Vec<String>,
}

/// A student an alert concerns, as a guardian's message names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StudentRef {
    pub id: String,
    pub name: String,
    pub school_id: String,
    pub school_name: String,
    pub grade: String,
}

/// One person to tell, with every usable address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub person_id: String,
    pub role: Role,
    pub name: String,
    pub language: String,
    /// For guardians: their children within the audience. Empty otherwise.
    pub students: Vec<StudentRef>,
    /// Usable addresses; empty means the person cannot be reached.
    pub addresses: Vec<(Channel, String)>,
}

impl Recipient {
    /// The distinct names of the schools this recipient's children are named under.
    pub fn school_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .students
            .iter()
            .map(|s| s.school_name.as_str())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// The resolved audience.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Audience {
    pub recipients: Vec<Recipient>,
}

/// Why an audience could not be resolved. Unknown names are errors, not empty
/// results: a typo in `--school` must not silently reach nobody.
#[derive(Debug, thiserror::Error)]
pub enum AudienceError {
    #[error("unknown group {0:?} (not in [[groups]])")]
    UnknownGroup(String),
    /// A school, grade or class the SIS copy does not have, with the
    /// closest values it does have (closest first).
    #[error("{what} `{value}` is not in the SIS; {}", known_list(what, known))]
    Unknown {
        what: &'static str,
        value: String,
        known: Vec<String>,
    },
    #[error("group {group:?} names person {id:?}, who is not in the SIS copy")]
    UnknownPerson { group: String, id: String },
    #[error("reading the SIS copy: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

impl AudienceError {
    /// True when the request named something that is not there (a client
    /// mistake), false when reading the SIS failed.
    pub fn is_unknown_name(&self) -> bool {
        !matches!(self, AudienceError::Sqlite(_))
    }
}

fn known_list(what: &str, known: &[String]) -> String {
    const SHOWN: usize = 8;
    if known.is_empty() {
        return format!("the SIS copy has no {what}s");
    }
    let mut s = format!("{what}s are {}", known[..known.len().min(SHOWN)].join(", "));
    if known.len() > SHOWN {
        s += &format!(", … ({} in all)", known.len());
    }
    s
}

/// `candidates` ordered by how close they are to `value` (edit distance on
/// lowercase text, then alphabetical), so the likely meant one comes first.
pub fn closest(value: &str, mut candidates: Vec<String>) -> Vec<String> {
    let v = value.to_lowercase();
    candidates.sort_by_cached_key(|c| (edit_distance(&v, &c.to_lowercase()), c.clone()));
    candidates.dedup();
    candidates
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The narrowing dimensions of a spec or a group, with ids resolved to keys.
struct Dims {
    schools: Vec<u32>,
    grades: Vec<String>,
    classes: Vec<u32>,
    roles: Vec<Role>,
}

impl Dims {
    fn narrows(&self) -> bool {
        !(self.schools.is_empty()
            && self.grades.is_empty()
            && self.classes.is_empty()
            && self.roles.is_empty())
    }
    fn wants(&self, role: Role) -> bool {
        self.roles.is_empty() || self.roles.contains(&role)
    }
}

/// Who has been picked so far, by person key. Merging the parts of a spec is
/// a union of these sets.
#[derive(Default)]
struct Picked {
    /// Students in scope → the school the alert names them under.
    in_scope: HashMap<u32, Option<u32>>,
    students: HashSet<u32>,
    staff: HashSet<u32>,
    /// Guardian → their children in scope.
    guardians: HashMap<u32, Vec<u32>>,
}

/// Resolves an audience spec against the SIS copy.
///
/// Rules, in the order a user reads a spec:
/// - **Within a dimension, union**: `schools = [A, B]` is A or B; the same for
///   grades, classes and roles.
/// - **Across dimensions, intersection**: `schools = [A], grades = ["5"]` is
///   grade-5 students at A. Grades compare after [`normalize_grade`] (`05` = `5`).
/// - **An empty list never narrows**: `AudienceSpec::default()` is every
///   student, guardian and staff member of the district.
/// - The dimensions pick a set of **students in scope**. Role `student` sends
///   to them; role `guardian` sends to their guardians (a guardian of a
///   grade-5 student at A is in "school A, grade 5, guardian"); role `staff`
///   sends to staff attached to a listed school, member of a listed class and
///   teaching a class of a listed grade (each condition only when its list is
///   non-empty).
/// - **Groups are added**: the result is the union of the spec's own
///   dimensions and each named group, where a group is resolved the same way
///   from its own lists plus its individual `people`. A spec that names only
///   groups (every other list empty) is just the union of those groups.
/// - **One recipient per person**: someone picked several ways appears once;
///   picked as a guardian anywhere, they are a guardian whose `students` are
///   all their children in scope (with the school they are named under);
///   otherwise staff, otherwise student. A guardian named individually in a
///   group's `people` has all their children listed.
/// - Everyone picked is returned, even with no usable address (`addresses`
///   empty): they are reported as unreachable, not dropped.
///
/// Recipients come sorted by role (guardian, staff, student) then person id.
pub fn resolve(
    sis: &Connection,
    spec: &AudienceSpec,
    groups: &[GroupConfig],
) -> Result<Audience, AudienceError> {
    // One read transaction for the whole resolution: outside one, every
    // statement takes and drops the file lock and revalidates its cache,
    // which costs more than the lookups themselves.
    let read = sis.unchecked_transaction()?;
    let plan = plan(sis, spec, groups)?;
    let mut recipients = plan.build(sis, &plan.keys)?;
    recipients.sort_by(|a, b| {
        a.role
            .cmp(&b.role)
            .then_with(|| a.person_id.cmp(&b.person_id))
    });
    read.finish()?;
    Ok(Audience { recipients })
}

/// Who an audience is, as person keys, without their details: small (a
/// few bytes a person), so a district-wide alert can be written out in
/// chunks of `Plan::build` without holding every name and address at once.
pub struct Plan {
    schools: Schools,
    picked: Picked,
    need: Vec<Need>,
    /// The recipients' keys, in key order.
    keys: Vec<u32>,
}

impl Plan {
    /// How many recipients the audience has.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The recipients `range` of the plan (in key order), with names,
    /// addresses and children. Call inside a read transaction on the same
    /// SIS file the plan came from.
    pub fn recipients(
        &self,
        sis: &Connection,
        range: std::ops::Range<usize>,
    ) -> Result<Vec<Recipient>, AudienceError> {
        let end = range.end.min(self.keys.len());
        let start = range.start.min(end);
        self.build(sis, &self.keys[start..end])
    }
}

/// What the pre-flight checks need to know of an audience, without names
/// or addresses: counted in two scans, so it is cheap for a whole district.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanSummary {
    pub recipients: usize,
    /// Recipients per language (as the SIS spells it).
    pub languages: BTreeMap<String, usize>,
    /// Deliveries one send makes per channel, with the same channel choice
    /// as the store (`domain::channels_for`).
    pub deliveries: BTreeMap<Channel, usize>,
    /// Recipients with no address on any channel this install can send on.
    pub unreachable: usize,
}

impl Plan {
    /// Counts the plan's recipients per language and deliveries per channel
    /// for a playbook sending on `wanted`, on an install with `available`.
    pub fn summary(
        &self,
        sis: &Connection,
        wanted: &[Channel],
        available: &[Channel],
    ) -> Result<PlanSummary, AudienceError> {
        let is_recipient = |pk: u32| matches!(self.need.get(pk as usize), Some(Need::As(_)));
        let mut out = PlanSummary {
            recipients: self.keys.len(),
            ..Default::default()
        };
        let big = self.keys.len() > SCAN_THRESHOLD;
        rows_for(
            sis,
            &self.keys,
            big,
            "SELECT pk, language FROM people",
            "SELECT pk, language FROM people WHERE pk BETWEEN ?1 AND ?2",
            |r| {
                if is_recipient(r.get(0)?) {
                    *out.languages.entry(r.get(1)?).or_default() += 1;
                }
                Ok(())
            },
        )?;
        // One bit per channel a person has an address for.
        let mut has: HashMap<u32, u8> = HashMap::with_capacity(self.keys.len());
        rows_for(
            sis,
            &self.keys,
            big,
            "SELECT person, channel FROM contacts",
            "SELECT person, channel FROM contacts WHERE person BETWEEN ?1 AND ?2",
            |r| {
                let pk: u32 = r.get(0)?;
                if is_recipient(pk)
                    && let Some(ch) = r.get_ref(1)?.as_str().ok().and_then(Channel::parse)
                {
                    *has.entry(pk).or_default() |= 1 << ch as u8;
                }
                Ok(())
            },
        )?;
        for &pk in &self.keys {
            let bits = has.get(&pk).copied().unwrap_or(0);
            let addresses: Vec<(Channel, String)> = Channel::ALL
                .into_iter()
                .filter(|c| bits & (1 << *c as u8) != 0)
                .map(|c| (c, String::new()))
                .collect();
            let chosen = crate::domain::channels_for(wanted, available, &addresses);
            if chosen.is_empty() {
                out.unreachable += 1;
            }
            for (ch, _) in chosen {
                *out.deliveries.entry(*ch).or_default() += 1;
            }
        }
        Ok(out)
    }
}

/// Picks the audience's person keys (see [`resolve`] for the rules).
pub fn plan(
    sis: &Connection,
    spec: &AudienceSpec,
    groups: &[GroupConfig],
) -> Result<Plan, AudienceError> {
    let schools = load_schools(sis)?;
    let mut picked = Picked::default();
    let own = dims(
        sis,
        &schools,
        &spec.schools,
        &spec.grades,
        &spec.classes,
        &spec.roles,
    )?;
    if own.narrows() || spec.groups.is_empty() {
        pick(sis, &own, &mut picked)?;
    }
    for name in &spec.groups {
        let group = groups
            .iter()
            .find(|g| g.name == *name)
            .ok_or_else(|| AudienceError::UnknownGroup(name.clone()))?;
        let d = dims(
            sis,
            &schools,
            &group.schools,
            &group.grades,
            &group.classes,
            &group.roles,
        )?;
        if d.narrows() || group.people.is_empty() {
            pick(sis, &d, &mut picked)?;
        }
        pick_people(sis, group, &mut picked)?;
    }
    let need = needs(sis, &picked)?;
    let keys = (0..need.len() as u32)
        .filter(|&k| matches!(need[k as usize], Need::As(_)))
        .collect();
    Ok(Plan {
        schools,
        picked,
        need,
        keys,
    })
}

type Schools = HashMap<u32, (String, String)>;

fn load_schools(sis: &Connection) -> Result<Schools, AudienceError> {
    let mut st = sis.prepare("SELECT pk, id, name FROM schools")?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, u32>(0)?,
            (r.get::<_, String>(1)?, r.get::<_, String>(2)?),
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn dims(
    sis: &Connection,
    schools: &Schools,
    school_ids: &[String],
    grades: &[String],
    class_ids: &[String],
    roles: &[Role],
) -> Result<Dims, AudienceError> {
    let mut d = Dims {
        schools: Vec::new(),
        grades: Vec::new(),
        classes: Vec::new(),
        roles: roles.to_vec(),
    };
    for id in school_ids {
        let pk = schools
            .iter()
            .find(|(_, (sid, _))| sid == id)
            .map(|(pk, _)| *pk);
        d.schools.push(pk.ok_or_else(|| AudienceError::Unknown {
            what: "school",
            value: id.clone(),
            known: closest(id, schools.values().map(|(sid, _)| sid.clone()).collect()),
        })?);
    }
    if !grades.is_empty() {
        // Grades a student or a class has: anything else reaches nobody.
        let mut st = sis.prepare_cached(
            "SELECT grade FROM people WHERE is_student = 1 AND grade IS NOT NULL
             UNION SELECT grade FROM class_grades",
        )?;
        let known: Vec<String> = st
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<_, _>>()?;
        for g in grades {
            let n = normalize_grade(g);
            if !known.iter().any(|k| normalize_grade(k) == n) {
                return Err(AudienceError::Unknown {
                    what: "grade",
                    value: g.clone(),
                    known: closest(g, known),
                });
            }
            d.grades.push(n);
        }
    }
    let mut st = sis.prepare_cached("SELECT pk FROM classes WHERE id = ?1")?;
    for id in class_ids {
        let pk: Option<u32> = st.query_row([id], |r| r.get(0)).ok();
        match pk {
            Some(pk) => d.classes.push(pk),
            None => {
                let mut all = sis.prepare_cached("SELECT id FROM classes")?;
                let known = all
                    .query_map([], |r| r.get::<_, String>(0))?
                    .collect::<Result<_, _>>()?;
                return Err(AudienceError::Unknown {
                    what: "class",
                    value: id.clone(),
                    known: closest(id, known),
                });
            }
        }
    }
    Ok(d)
}

fn int_list(v: &[u32]) -> String {
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// Above this many students in scope a full scan of the relation beats one
/// index lookup per student.
const SCAN_THRESHOLD: usize = 2_000;

fn pick(sis: &Connection, d: &Dims, picked: &mut Picked) -> Result<(), AudienceError> {
    let grade_params: Vec<&dyn rusqlite::ToSql> =
        d.grades.iter().map(|g| g as &dyn rusqlite::ToSql).collect();
    let grade_marks = vec!["?"; d.grades.len()].join(",");
    // Keys are our own integers, so they are written into the SQL; grades,
    // which come from the user, are bound.
    if d.wants(Role::Student) || d.wants(Role::Guardian) {
        // With schools named, drive the query from the school index (a few
        // hundred rows) instead of testing every student in the district.
        let mut q = if d.schools.is_empty() {
            // The school a child is named under is looked up later, only
            // for the children actually listed.
            String::from("SELECT p.pk, NULL FROM people p WHERE p.is_student = 1")
        } else {
            format!(
                "SELECT p.pk, MIN(ps.school) FROM person_schools ps JOIN people p ON p.pk = ps.person
                 WHERE ps.school IN ({}) AND p.is_student = 1",
                int_list(&d.schools)
            )
        };
        if !d.grades.is_empty() {
            q += &format!(" AND p.grade IN ({grade_marks})");
        }
        if !d.classes.is_empty() {
            q += &format!(
                " AND EXISTS (SELECT 1 FROM class_members cm WHERE cm.person = p.pk AND cm.class IN ({}))",
                int_list(&d.classes)
            );
        }
        if !d.schools.is_empty() {
            q += " GROUP BY p.pk";
        }
        let mut st = sis.prepare(&q)?;
        let mut rows = st.query(grade_params.as_slice())?;
        let mut scope = Vec::new();
        while let Some(r) = rows.next()? {
            let pk: u32 = r.get(0)?;
            let school: Option<u32> = r.get(1)?;
            scope.push(pk);
            picked.in_scope.entry(pk).or_insert(school);
        }
        if d.wants(Role::Student) {
            picked.students.extend(scope.iter().copied());
        }
        if d.wants(Role::Guardian) {
            pick_guardians(sis, &scope, picked)?;
        }
    }
    if d.wants(Role::Staff) {
        let mut q = if d.schools.is_empty() {
            String::from("SELECT p.pk FROM people p WHERE p.is_staff = 1")
        } else {
            format!(
                "SELECT DISTINCT p.pk FROM person_schools ps JOIN people p ON p.pk = ps.person
                 WHERE ps.school IN ({}) AND p.is_staff = 1",
                int_list(&d.schools)
            )
        };
        if !d.classes.is_empty() {
            q += &format!(
                " AND EXISTS (SELECT 1 FROM class_members cm WHERE cm.person = p.pk AND cm.class IN ({}))",
                int_list(&d.classes)
            );
        }
        if !d.grades.is_empty() {
            q += &format!(
                " AND EXISTS (SELECT 1 FROM class_members cm JOIN class_grades cg ON cg.class = cm.class WHERE cm.person = p.pk AND cg.grade IN ({grade_marks}))"
            );
        }
        let mut st = sis.prepare(&q)?;
        let mut rows = st.query(grade_params.as_slice())?;
        while let Some(r) = rows.next()? {
            picked.staff.insert(r.get(0)?);
        }
    }
    Ok(())
}

fn pick_guardians(
    sis: &Connection,
    scope: &[u32],
    picked: &mut Picked,
) -> Result<(), AudienceError> {
    let mut add = |g: u32, s: u32| {
        let kids = picked.guardians.entry(g).or_default();
        if !kids.contains(&s) {
            kids.push(s);
        }
    };
    if scope.len() > SCAN_THRESHOLD {
        let wanted: HashSet<u32> = scope.iter().copied().collect();
        let mut st = sis.prepare("SELECT guardian, student FROM guardianship")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let (g, s): (u32, u32) = (r.get(0)?, r.get(1)?);
            if wanted.contains(&s) {
                add(g, s);
            }
        }
    } else {
        let mut st = sis.prepare_cached("SELECT guardian FROM guardianship WHERE student = ?1")?;
        for &s in scope {
            let mut rows = st.query([s])?;
            while let Some(r) = rows.next()? {
                add(r.get(0)?, s);
            }
        }
    }
    Ok(())
}

fn pick_people(
    sis: &Connection,
    group: &GroupConfig,
    picked: &mut Picked,
) -> Result<(), AudienceError> {
    let mut st = sis
        .prepare_cached("SELECT pk, is_student, is_staff, is_guardian FROM people WHERE id = ?1")?;
    let mut kids = sis.prepare_cached(
        "SELECT g.student, (SELECT MIN(ps.school) FROM person_schools ps WHERE ps.person = g.student)
         FROM guardianship g WHERE g.guardian = ?1",
    )?;
    for id in &group.people {
        let row: Option<(u32, bool, bool, bool)> = st
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .ok();
        let Some((pk, student, staff, guardian)) = row else {
            return Err(AudienceError::UnknownPerson {
                group: group.name.clone(),
                id: id.clone(),
            });
        };
        if guardian {
            let mut rows = kids.query([pk])?;
            let mut list = Vec::new();
            while let Some(r) = rows.next()? {
                let (s, school): (u32, Option<u32>) = (r.get(0)?, r.get(1)?);
                picked.in_scope.entry(s).or_insert(school);
                list.push(s);
            }
            let entry = picked.guardians.entry(pk).or_default();
            for s in list {
                if !entry.contains(&s) {
                    entry.push(s);
                }
            }
        } else if staff {
            picked.staff.insert(pk);
        } else if student {
            picked.students.insert(pk);
            picked.in_scope.entry(pk).or_insert(None);
        }
    }
    Ok(())
}

struct PersonRow {
    id: String,
    name: String,
    language: String,
    grade: String,
}

/// What a person is in the result, indexed by key (keys are dense).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    No,
    /// Only named as someone's child.
    Child,
    As(Role),
}

/// Runs `full` once and keeps the rows `keep` wants when many are needed,
/// else runs `range` (keys `?1` to `?2` through its index, the key in the
/// first column) over runs of keys that lie close together, passing on only
/// the rows of `keys`. Keys of a chunk are mostly neighbours (people are
/// imported family by family), so a thousand lookups become a few dozen
/// range reads.
fn rows_for(
    sis: &Connection,
    keys: &[u32],
    scan: bool,
    full: &str,
    range: &str,
    mut f: impl FnMut(&rusqlite::Row) -> rusqlite::Result<()>,
) -> Result<(), AudienceError> {
    if scan && keys.len() > SCAN_THRESHOLD {
        let mut st = sis.prepare(full)?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            f(r)?;
        }
        return Ok(());
    }
    let mut sorted = keys.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut st = sis.prepare(range)?;
    for run in key_runs(&sorted) {
        let (lo, hi) = (run[0], run[run.len() - 1]);
        let mut rows = st.query([lo, hi])?;
        while let Some(r) = rows.next()? {
            if lo == hi || run.binary_search(&r.get::<_, u32>(0)?).is_ok() {
                f(r)?;
            }
        }
    }
    Ok(())
}

/// Splits sorted keys into runs whose span is at most about twice their
/// length, so a range read of a run reads few rows it does not want.
fn key_runs(sorted: &[u32]) -> impl Iterator<Item = &[u32]> {
    let mut rest = sorted;
    std::iter::from_fn(move || {
        let first = *rest.first()?;
        let mut n = 1;
        while n < rest.len() && (rest[n] - first) as usize <= 2 * (n + 1) + 8 {
            n += 1;
        }
        let (run, tail) = rest.split_at(n);
        rest = tail;
        Some(run)
    })
}

/// What each person is in the result, indexed by key. Precedence:
/// guardian, then staff, then student.
fn needs(sis: &Connection, picked: &Picked) -> Result<Vec<Need>, AudienceError> {
    let max: u32 = sis.query_row("SELECT IFNULL(MAX(pk), 0) FROM people", [], |r| r.get(0))?;
    let mut need = vec![Need::No; max as usize + 1];
    let mut set = |pk: u32, n: Need| {
        if let Some(slot) = need.get_mut(pk as usize)
            && (*slot == Need::No || *slot == Need::Child)
        {
            *slot = n;
        }
    };
    for (&g, kids) in &picked.guardians {
        set(g, Need::As(Role::Guardian));
        for &k in kids {
            set(k, Need::Child);
        }
    }
    for &pk in &picked.staff {
        set(pk, Need::As(Role::Staff));
    }
    for &pk in &picked.students {
        set(pk, Need::As(Role::Student));
    }
    Ok(need)
}

/// A map from person key to a value: a dense vector when most of the
/// district is wanted (no hashing on the hot path), a hash map for a chunk.
enum KeyMap<T> {
    Dense(Vec<Option<T>>),
    Sparse(HashMap<u32, T>),
}

impl<T> KeyMap<T> {
    fn new(dense: bool, wanted: usize, universe: usize) -> KeyMap<T> {
        if dense {
            let mut v = Vec::new();
            // Dense: every key of the district is a slot.
            v.resize_with(universe, || None);
            KeyMap::Dense(v)
        } else {
            KeyMap::Sparse(HashMap::with_capacity(wanted))
        }
    }

    fn get(&self, k: u32) -> Option<&T> {
        match self {
            KeyMap::Dense(v) => v.get(k as usize)?.as_ref(),
            KeyMap::Sparse(m) => m.get(&k),
        }
    }

    fn get_or_insert_with(&mut self, k: u32, f: impl FnOnce() -> T) -> &mut T {
        match self {
            KeyMap::Dense(v) => {
                if v.len() <= k as usize {
                    v.resize_with(k as usize + 1, || None);
                }
                v[k as usize].get_or_insert_with(f)
            }
            KeyMap::Sparse(m) => m.entry(k).or_insert_with(f),
        }
    }

    fn insert(&mut self, k: u32, t: T) {
        match self {
            KeyMap::Dense(v) => {
                if v.len() <= k as usize {
                    v.resize_with(k as usize + 1, || None);
                }
                v[k as usize] = Some(t);
            }
            KeyMap::Sparse(m) => {
                m.insert(k, t);
            }
        }
    }

    fn remove(&mut self, k: u32) -> Option<T> {
        match self {
            KeyMap::Dense(v) => v.get_mut(k as usize)?.take(),
            KeyMap::Sparse(m) => m.remove(&k),
        }
    }
}

impl Plan {
    /// Loads names, languages, addresses and children for `keys` (recipient
    /// keys of this plan) and builds their `Recipient`s, in key order.
    fn build(&self, sis: &Connection, keys: &[u32]) -> Result<Vec<Recipient>, AudienceError> {
        let (picked, need, schools) = (&self.picked, &self.need, &self.schools);
        // The people to load: the recipients and the children they name.
        // For the whole plan that is exactly who `need` marks; for a chunk,
        // a set.
        let full = keys.len() == self.keys.len();
        let mut wanted: HashSet<u32> = HashSet::new();
        let mut all: Vec<u32> = Vec::new();
        if full {
            all = (0..need.len() as u32)
                .filter(|&k| need[k as usize] != Need::No)
                .collect();
        } else {
            wanted.extend(keys.iter().copied());
            for &k in keys {
                if let Some(kids) = picked.guardians.get(&k)
                    && matches!(need[k as usize], Need::As(Role::Guardian))
                {
                    wanted.extend(kids.iter().copied());
                }
            }
            all.extend(wanted.iter().copied());
            all.sort_unstable();
        }
        let keep = |pk: u32| {
            if full {
                need.get(pk as usize).is_some_and(|n| *n != Need::No)
            } else {
                wanted.contains(&pk)
            }
        };
        let universe = need.len();
        let mut people: KeyMap<PersonRow> =
            KeyMap::new(full && all.len() > SCAN_THRESHOLD, all.len(), universe);
        // A chunk always goes through the index: a full scan would cost the
        // whole district's time for a few thousand people.
        rows_for(
            sis,
            &all,
            full,
            "SELECT pk, id, given, family, language, grade FROM people",
            "SELECT pk, id, given, family, language, grade FROM people WHERE pk BETWEEN ?1 AND ?2",
            |r| {
                let pk: u32 = r.get(0)?;
                if keep(pk) {
                    let given: rusqlite::types::ValueRef = r.get_ref(2)?;
                    let family: rusqlite::types::ValueRef = r.get_ref(3)?;
                    let name = format!(
                        "{} {}",
                        given.as_str().unwrap_or_default(),
                        family.as_str().unwrap_or_default()
                    )
                    .trim()
                    .to_string();
                    people.insert(
                        pk,
                        PersonRow {
                            id: r.get(1)?,
                            name,
                            language: r.get(4)?,
                            grade: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
                        },
                    );
                }
                Ok(())
            },
        )?;

        let recipient_set: HashSet<u32> = if full {
            HashSet::new()
        } else {
            keys.iter().copied().collect()
        };
        let mut addresses: KeyMap<Vec<(Channel, String)>> =
            KeyMap::new(full && keys.len() > SCAN_THRESHOLD, keys.len(), universe);
        rows_for(
            sis,
            keys,
            full,
            "SELECT person, channel, address FROM contacts",
            "SELECT person, channel, address FROM contacts WHERE person BETWEEN ?1 AND ?2",
            |r| {
                let pk: u32 = r.get(0)?;
                let is_recipient = if full {
                    matches!(need.get(pk as usize), Some(Need::As(_)))
                } else {
                    recipient_set.contains(&pk)
                };
                if is_recipient {
                    let ch = r.get_ref(1)?;
                    if let Some(ch) = ch.as_str().ok().and_then(Channel::parse) {
                        addresses
                            .get_or_insert_with(pk, Vec::new)
                            .push((ch, r.get(2)?));
                    }
                }
                Ok(())
            },
        )?;

        // Children picked without a school (no school filter): their first school.
        let unnamed: Vec<u32> = all
            .iter()
            .copied()
            .filter(|k| picked.in_scope.get(k).is_some_and(Option::is_none))
            .collect();
        let mut first_school: HashMap<u32, u32> = HashMap::new();
        rows_for(
            sis,
            &unnamed,
            full,
            "SELECT person, MIN(school) FROM person_schools GROUP BY person",
            "SELECT person, MIN(school) FROM person_schools WHERE person BETWEEN ?1 AND ?2 GROUP BY person",
            |r| {
                let pk: u32 = r.get(0)?;
                if picked.in_scope.get(&pk).is_some_and(Option::is_none)
                    && let Some(s) = r.get::<_, Option<u32>>(1)?
                {
                    first_school.insert(pk, s);
                }
                Ok(())
            },
        )?;

        let student_ref = |pk: u32| -> Option<StudentRef> {
            let p = people.get(pk)?;
            let school = picked
                .in_scope
                .get(&pk)
                .copied()
                .flatten()
                .or_else(|| first_school.get(&pk).copied());
            let (school_id, school_name) = school
                .and_then(|s| schools.get(&s).cloned())
                .unwrap_or_default();
            Some(StudentRef {
                id: p.id.clone(),
                name: p.name.clone(),
                school_id,
                school_name,
                grade: p.grade.clone(),
            })
        };
        let mut recipients = Vec::with_capacity(keys.len());
        for &pk in keys {
            let Need::As(role) = need[pk as usize] else {
                continue;
            };
            let Some(p) = people.get(pk) else {
                continue;
            };
            let students = match role {
                Role::Guardian => {
                    let mut list: Vec<StudentRef> = picked
                        .guardians
                        .get(&pk)
                        .into_iter()
                        .flatten()
                        .filter_map(|&s| student_ref(s))
                        .collect();
                    list.sort_by(|a, b| a.id.cmp(&b.id));
                    list
                }
                _ => Vec::new(),
            };
            let mut addrs = addresses.remove(pk).unwrap_or_default();
            addrs.sort();
            recipients.push(Recipient {
                person_id: p.id.clone(),
                role,
                name: p.name.clone(),
                language: p.language.clone(),
                students,
                addresses: addrs,
            });
        }
        Ok(recipients)
    }
}

/// Someone in the audience with no usable address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unreachable {
    pub person_id: String,
    pub name: String,
    pub role: Role,
}

/// A summary of an audience, for `klaxon audience` (table or JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AudiencePreview {
    pub recipients: usize,
    pub per_role: BTreeMap<Role, usize>,
    /// Recipients reachable on each channel.
    pub per_channel: BTreeMap<Channel, usize>,
    /// Messages one send would hand to providers (one per address).
    pub addresses: usize,
    pub unreachable: Vec<Unreachable>,
}

impl Audience {
    pub fn preview(&self) -> AudiencePreview {
        let mut p = AudiencePreview {
            recipients: self.recipients.len(),
            ..Default::default()
        };
        for r in &self.recipients {
            *p.per_role.entry(r.role).or_default() += 1;
            let mut seen = Vec::with_capacity(3);
            for (ch, _) in &r.addresses {
                if !seen.contains(ch) {
                    seen.push(*ch);
                    *p.per_channel.entry(*ch).or_default() += 1;
                }
            }
            p.addresses += r.addresses.len();
            if r.addresses.is_empty() {
                p.unreachable.push(Unreachable {
                    person_id: r.person_id.clone(),
                    name: r.name.clone(),
                    role: r.role,
                });
            }
        }
        p
    }
}

impl fmt::Display for AudiencePreview {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<12} {:>9}", "role", "people")?;
        for role in Role::ALL {
            writeln!(
                f,
                "{:<12} {:>9}",
                role.as_str(),
                self.per_role.get(&role).copied().unwrap_or(0)
            )?;
        }
        writeln!(f, "{:<12} {:>9}", "total", self.recipients)?;
        writeln!(f)?;
        writeln!(f, "{:<12} {:>9}", "channel", "reachable")?;
        for ch in Channel::ALL {
            writeln!(
                f,
                "{:<12} {:>9}",
                ch.as_str(),
                self.per_channel.get(&ch).copied().unwrap_or(0)
            )?;
        }
        writeln!(f, "{:<12} {:>9}", "messages", self.addresses)?;
        writeln!(f)?;
        writeln!(
            f,
            "unreachable (no usable address): {}",
            self.unreachable.len()
        )?;
        for u in &self.unreachable {
            writeln!(
                f,
                "  {:<10} {:<20} {}",
                u.role.as_str(),
                u.person_id,
                u.name
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sis::{self, GenerateOptions, ImportOptions, SisConfig};

    #[test]
    fn key_runs_keep_neighbours_together_and_lose_no_key() {
        let keys = [1, 2, 3, 5, 8, 40, 41, 1000, 5000, 5001, 5002];
        let runs: Vec<&[u32]> = key_runs(&keys).collect();
        assert_eq!(
            runs,
            vec![
                &[1, 2, 3, 5, 8][..],
                &[40, 41],
                &[1000],
                &[5000, 5001, 5002]
            ]
        );
        assert_eq!(key_runs(&[]).count(), 0);
    }

    /// Chunks read their people by ranges of keys; the whole district above
    /// the threshold reads by scans. Both must give the same recipients.
    #[test]
    fn chunks_read_by_key_ranges_equal_the_whole_audience_read_by_scans() {
        let dir = tempfile::tempdir().unwrap();
        let (export, out) = (dir.path().join("export"), dir.path().join("sis"));
        sis::generate(
            &export,
            &GenerateOptions {
                students: 3_000,
                schools: None,
                seed: 5,
            },
        )
        .unwrap();
        sis::import(
            &export,
            &out,
            &SisConfig::default(),
            &ImportOptions { force: true },
        )
        .unwrap();
        let conn = Connection::open(out.join("sis.db")).unwrap();
        let whole = resolve(&conn, &AudienceSpec::default(), &[]).unwrap();
        assert!(whole.recipients.len() > SCAN_THRESHOLD);
        let plan = plan(&conn, &AudienceSpec::default(), &[]).unwrap();
        let mut chunked = Vec::new();
        for start in (0..plan.len()).step_by(37) {
            chunked.extend(plan.recipients(&conn, start..start + 37).unwrap());
        }
        chunked.sort_by(|a, b| {
            a.role
                .cmp(&b.role)
                .then_with(|| a.person_id.cmp(&b.person_id))
        });
        assert_eq!(chunked.len(), whole.recipients.len());
        assert!(
            chunked
                .iter()
                .any(|r| !r.students.is_empty() && !r.addresses.is_empty())
        );
        assert_eq!(chunked, whole.recipients);
    }
}
