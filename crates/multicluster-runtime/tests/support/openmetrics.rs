//! A strict parser of the OpenMetrics 1.0 text format, for tests: it rejects what a
//! Prometheus server would reject and more (interleaved families, duplicate series,
//! samples that do not belong to their family's type, broken histograms, a missing
//! or misplaced `# EOF`), and returns the samples for assertions.

use std::collections::{BTreeMap, BTreeSet};

/// One metric family: its metadata and samples, in exposition order.
#[derive(Debug, Clone)]
pub struct MetricFamily {
    pub name: String,
    pub kind: String,
    pub help: Option<String>,
    pub unit: Option<String>,
    pub samples: Vec<Sample>,
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Clone)]
pub struct Exposition {
    pub families: Vec<MetricFamily>,
}

const TYPES: [&str; 8] = [
    "counter",
    "gauge",
    "histogram",
    "gaugehistogram",
    "stateset",
    "info",
    "summary",
    "unknown",
];

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    is_name(name) && !name.contains(':')
}

/// Parses `text`; the error names the line (1-based) and what is wrong.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let body = text
        .strip_suffix("# EOF\n")
        .or_else(|| text.strip_suffix("# EOF"))
        .ok_or("the exposition does not end with `# EOF`")?;
    if !body.is_empty() && !body.ends_with('\n') {
        return Err("`# EOF` is not on a line of its own".into());
    }
    let mut families: Vec<MetricFamily> = Vec::new();
    let mut seen_families = BTreeSet::new();
    let mut seen_series = BTreeSet::new();
    for (index, line) in body.split_terminator('\n').enumerate() {
        let at = |what: String| format!("line {}: {what}: {line:?}", index + 1);
        if line.is_empty() {
            return Err(at("empty line".into()));
        }
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (keyword, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let rest = parts.next();
            if !is_name(name) {
                return Err(at(format!("bad metric name {name:?}")));
            }
            let current = families
                .last_mut()
                .filter(|f| f.name == name && f.samples.is_empty());
            let family = match current {
                Some(family) => family,
                None => {
                    if !seen_families.insert(name.to_owned()) {
                        return Err(at(format!("family {name} appears twice (interleaved)")));
                    }
                    families.push(MetricFamily {
                        name: name.to_owned(),
                        kind: "unknown".into(),
                        help: None,
                        unit: None,
                        samples: Vec::new(),
                    });
                    families.last_mut().expect("pushed")
                }
            };
            match (keyword, rest) {
                ("TYPE", Some(kind)) if TYPES.contains(&kind) => family.kind = kind.to_owned(),
                ("HELP", Some(help)) if family.help.is_none() => family.help = Some(help.to_owned()),
                ("UNIT", Some(unit)) if family.unit.is_none() => {
                    if !name.ends_with(&format!("_{unit}")) {
                        return Err(at(format!("family {name} does not end with its unit {unit}")));
                    }
                    family.unit = Some(unit.to_owned());
                }
                _ => return Err(at("bad or repeated metadata".into())),
            }
            continue;
        }
        if line.starts_with('#') {
            return Err(at("comment that is not HELP, TYPE, UNIT or EOF".into()));
        }
        let sample = parse_sample(line).map_err(at)?;
        let family = families
            .last_mut()
            .filter(|f| belongs(&sample.name, f))
            .ok_or_else(|| at(format!("sample {} outside its family", sample.name)))?;
        if family.kind == "counter"
            && sample.name.ends_with("_total")
            && (sample.value.is_nan() || sample.value < 0.0)
        {
            return Err(at("negative or NaN counter".into()));
        }
        let series = format!("{}{:?}", sample.name, sample.labels);
        if !seen_series.insert(series.clone()) {
            return Err(at(format!("duplicate series {series}")));
        }
        family.samples.push(sample);
    }
    for family in &families {
        if family.kind == "histogram" {
            check_histogram(family)?;
        }
    }
    Ok(Exposition { families })
}

/// Whether a sample called `name` may appear in `family`.
fn belongs(name: &str, family: &MetricFamily) -> bool {
    let suffixes: &[&str] = match family.kind.as_str() {
        "counter" => &["_total", "_created"],
        "histogram" | "gaugehistogram" => &["_bucket", "_count", "_sum", "_created", "_gcount", "_gsum"],
        "summary" => &["", "_count", "_sum", "_created"],
        "info" => &["_info"],
        _ => &[""],
    };
    suffixes
        .iter()
        .any(|suffix| name.strip_suffix(suffix) == Some(&family.name))
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !is_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, remaining) = parse_labels(after)?;
        labels = parsed;
        rest = remaining;
    }
    let rest = rest.strip_prefix(' ').ok_or("no space before the value")?;
    // An exemplar may follow after ` # `; the value and an optional timestamp before.
    let values = rest.split(" # ").next().unwrap_or(rest);
    let mut parts = values.split(' ');
    let value = parse_value(parts.next().unwrap_or(""))?;
    if let Some(timestamp) = parts.next() {
        parse_value(timestamp)?;
    }
    if parts.next().is_some() {
        return Err("trailing text after the sample".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "NaN" => Ok(f64::NAN),
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ if text.is_empty() || text.contains(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E') => {
            Err(format!("bad number {text:?}"))
        }
        _ => text.parse().map_err(|_| format!("bad number {text:?}")),
    }
}

/// Parses `name="value",...}` and returns the labels and what follows the `}`.
fn parse_labels(mut text: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    if let Some(rest) = text.strip_prefix('}') {
        return Ok((labels, rest));
    }
    loop {
        let eq = text.find('=').ok_or("label without `=`")?;
        let name = &text[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut chars = text[eq + 1..].char_indices();
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err(format!("label {name} value not quoted"));
        }
        let mut value = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    end = Some(eq + 1 + i + 1);
                    break;
                }
                '\\' => match chars.next().map(|(_, c)| c) {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in label {name}")),
                },
                '\n' => return Err("newline in a label value".into()),
                c => value.push(c),
            }
        }
        let end = end.ok_or(format!("label {name} value not closed"))?;
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        text = &text[end..];
        if let Some(rest) = text.strip_prefix('}') {
            return Ok((labels, rest));
        }
        text = text.strip_prefix(',').ok_or("labels not separated by `,`")?;
        if text.starts_with('}') {
            return Err("trailing comma in labels".into());
        }
    }
}

/// Buckets in increasing `le` order ending at `+Inf`, cumulative, and `_count`
/// equal to the `+Inf` bucket, for every label set of the histogram.
fn check_histogram(family: &MetricFamily) -> Result<(), String> {
    // Per label set (without `le`): the buckets as (le, value), and `_count`.
    type Group = (Vec<(f64, f64)>, Option<f64>);
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for sample in &family.samples {
        let mut labels = sample.labels.clone();
        let le = labels.remove("le");
        let group = groups.entry(format!("{labels:?}")).or_default();
        if sample.name.ends_with("_bucket") {
            let le = le.ok_or(format!("{}: bucket without le", family.name))?;
            group.0.push((parse_value(&le)?, sample.value));
        } else if sample.name.ends_with("_count") {
            group.1 = Some(sample.value);
        }
    }
    for (labels, (buckets, count)) in groups {
        let what = format!("histogram {}{labels}", family.name);
        if buckets.last().map(|b| b.0) != Some(f64::INFINITY) {
            return Err(format!("{what}: no +Inf bucket last"));
        }
        for pair in buckets.windows(2) {
            let increasing = pair[0].0.partial_cmp(&pair[1].0) == Some(std::cmp::Ordering::Less);
            if !increasing || pair[0].1 > pair[1].1 {
                return Err(format!("{what}: buckets out of order or not cumulative"));
            }
        }
        if count != buckets.last().map(|b| b.1) {
            return Err(format!("{what}: _count differs from the +Inf bucket"));
        }
    }
    Ok(())
}

impl Exposition {
    pub fn family(&self, name: &str) -> Option<&MetricFamily> {
        self.families.iter().find(|f| f.name == name)
    }

    /// Every sample called `name` (e.g. `workqueue_adds_total`).
    pub fn samples(&self, name: &str) -> Vec<&Sample> {
        self.families
            .iter()
            .flat_map(|f| &f.samples)
            .filter(|s| s.name == name)
            .collect()
    }

    /// The value of the sample `name` whose labels include all of `labels`, if
    /// exactly one matches; panics if several do.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<_> = self
            .samples(name)
            .into_iter()
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(
            matching.len() <= 1,
            "several {name} samples match {labels:?}: {matching:?}"
        );
        matching.first().map(|s| s.value)
    }

    /// Every sample with the label `key` equal to `value`.
    pub fn with_label(&self, key: &str, value: &str) -> Vec<&Sample> {
        self.families
            .iter()
            .flat_map(|f| &f.samples)
            .filter(|s| s.labels.get(key).map(String::as_str) == Some(value))
            .collect()
    }
}
