//! Which files the configured paths and globs stand for, and which directories to
//! watch for them.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use glob::{MatchOptions, Pattern, PatternError};

use super::error::FileError;

/// One configured place to look for kubeconfigs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Source {
    /// A kubeconfig file, or a directory whose files matching the patterns are.
    Path(PathBuf),
    /// A glob pattern over paths; every matching file is a kubeconfig.
    Glob(String),
}

/// The kubeconfig files found, in configuration order without repeats, and the
/// paths and patterns that could not be looked at.
#[derive(Debug, Default)]
pub(super) struct Scan {
    pub files: Vec<PathBuf>,
    pub errors: Vec<FileError>,
}

/// `*` never matches a leading dot, so hidden files (editor swap files, the `..data`
/// links of mounted Secrets) are never taken for kubeconfigs.
const MATCH: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: true,
};

/// Lists the kubeconfig files of `sources`; directories are searched (not
/// recursively) for names matching `patterns`.
pub(super) fn scan(sources: &[Source], patterns: &[String]) -> Scan {
    let mut scan = Scan::default();
    let patterns = compile(patterns, &mut scan.errors);
    for source in sources {
        match source {
            Source::Path(path) => scan_path(path, &patterns, &mut scan),
            Source::Glob(pattern) => scan_glob(pattern, &mut scan),
        }
    }
    let mut seen = HashSet::new();
    scan.files.retain(|file| seen.insert(file.clone()));
    scan
}

fn compile(patterns: &[String], errors: &mut Vec<FileError>) -> Vec<Pattern> {
    let compile_one = |pattern: &String| {
        Pattern::new(pattern)
            .map_err(|e| errors.push(pattern_error(pattern, &e)))
            .ok()
    };
    patterns.iter().filter_map(compile_one).collect()
}

fn pattern_error(pattern: &str, error: &PatternError) -> FileError {
    FileError::Pattern {
        pattern: pattern.to_owned(),
        reason: format!("{} at position {}", error.msg, error.pos),
    }
}

fn scan_path(path: &Path, patterns: &[Pattern], scan: &mut Scan) {
    let io_error = |source| FileError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => match list_dir(path, patterns) {
            Ok(files) => scan.files.extend(files),
            Err(source) => scan.errors.push(io_error(source)),
        },
        Ok(_) => scan.files.push(path.to_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            scan.errors.push(FileError::Missing {
                path: path.to_owned(),
            });
        }
        Err(source) => scan.errors.push(io_error(source)),
    }
}

/// The files of `dir` whose names match a pattern, sorted. Subdirectories are not
/// searched: a glob says so when that is wanted.
fn list_dir(dir: &Path, patterns: &[Pattern]) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|name| name.to_str());
        let matches = name.is_some_and(|name| patterns.iter().any(|p| p.matches_with(name, MATCH)));
        // `is_file` follows symbolic links, as the links of a mounted Secret need.
        if matches && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn scan_glob(pattern: &str, scan: &mut Scan) {
    let found = match glob::glob_with(pattern, MATCH) {
        Ok(found) => found,
        Err(e) => return scan.errors.push(pattern_error(pattern, &e)),
    };
    // The glob crate yields paths in alphabetical order.
    for path in found {
        match path {
            Ok(path) if path.is_file() => scan.files.push(path),
            Ok(_) => {}
            Err(e) => scan.errors.push(FileError::Io {
                path: e.path().to_owned(),
                source: e.into(),
            }),
        }
    }
}

/// The directories whose changes may change what [`scan`] finds, each with whether
/// its subdirectories must be watched too.
///
/// Files are watched through their directory, since editors and Secret mounts replace
/// files by renaming. A path that does not exist (yet, or any more) is watched through
/// its nearest existing ancestor, so that its creation is seen.
pub(super) fn watch_targets(sources: &[Source]) -> BTreeMap<PathBuf, bool> {
    let target = |source: &Source| match source {
        Source::Path(path) if path.is_dir() => (path.clone(), false),
        Source::Path(path) => (existing_ancestor(parent(path)), false),
        Source::Glob(pattern) => match glob_base(pattern) {
            (base, deep) if base.is_dir() => (base, deep),
            (base, _) => (existing_ancestor(&base), false),
        },
    };
    let mut targets = BTreeMap::new();
    for (dir, deep) in sources.iter().map(target) {
        *targets.entry(dir).or_default() |= deep;
    }
    targets
}

/// The directory of `path`; `.` for a bare file name.
fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn existing_ancestor(path: &Path) -> PathBuf {
    path.ancestors()
        .find(|ancestor| ancestor.is_dir())
        .unwrap_or(Path::new("."))
        .to_owned()
}

/// The directory a glob searches from (its components before the first wildcard),
/// and whether a wildcard stands for directories too, so that it must be watched
/// recursively.
fn glob_base(pattern: &str) -> (PathBuf, bool) {
    let components: Vec<_> = Path::new(pattern).components().collect();
    let is_wild = |c: &std::path::Component<'_>| c.as_os_str().to_string_lossy().contains(['*', '?', '[']);
    match components.iter().position(is_wild) {
        None => (parent(Path::new(pattern)).to_owned(), false),
        Some(0) => (PathBuf::from("."), components.len() > 1),
        Some(wild) => (components[..wild].iter().collect(), wild + 1 < components.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::write(path, "").expect("write");
    }

    #[test]
    fn glob_bases() {
        assert_eq!(glob_base("/etc/fleet/*.yaml"), ("/etc/fleet".into(), false));
        assert_eq!(glob_base("/srv/*/admin.conf"), ("/srv".into(), true));
        assert_eq!(glob_base("/srv/**/*.kubeconfig"), ("/srv".into(), true));
        assert_eq!(glob_base("*.kubeconfig"), (".".into(), false));
        assert_eq!(glob_base("/etc/plain"), ("/etc".into(), false));
    }

    #[test]
    fn directories_are_searched_with_the_patterns_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        for name in [
            "kubeconfig.yaml",
            "b.kubeconfig",
            "a.kubeconfig",
            "notes.yaml",
            ".swap.kubeconfig",
            "c.kubeconfig~",
        ] {
            touch(&d.join(name));
        }
        std::fs::create_dir(d.join("sub.kubeconfig")).expect("mkdir");
        let patterns = ["kubeconfig.yaml".to_owned(), "*.kubeconfig".to_owned()];
        let sources = [
            Source::Path(d.to_owned()),
            Source::Path(d.join("notes.yaml")),
            Source::Path(d.join("a.kubeconfig")),
        ];
        let found = scan(&sources, &patterns);
        assert!(found.errors.is_empty(), "{:?}", found.errors);
        let names: Vec<_> = found
            .files
            .iter()
            .map(|f| f.strip_prefix(d).expect("in dir"))
            .collect();
        let expected = ["a.kubeconfig", "b.kubeconfig", "kubeconfig.yaml", "notes.yaml"];
        assert_eq!(names, expected.map(Path::new));
    }

    #[test]
    fn globs_and_bad_input_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::create_dir(d.join("eu")).expect("mkdir");
        touch(&d.join("eu/admin.conf"));
        touch(&d.join("top.conf"));
        let glob = format!("{}/*/admin.conf", d.display());
        let sources = [
            Source::Glob(glob.clone()),
            Source::Glob(format!("{}/[", d.display())),
            Source::Path(d.join("missing")),
        ];
        let found = scan(&sources, &["[".to_owned()]);
        assert_eq!(found.files, vec![d.join("eu/admin.conf")]);
        let errors: Vec<_> = found.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("[: not a valid glob pattern"), "{errors:?}");
        assert!(
            errors[2].ends_with("missing: no such file or directory"),
            "{errors:?}"
        );
        assert!(found.errors.iter().all(FileError::is_configuration_error));
        let targets = watch_targets(&sources);
        assert_eq!(
            targets.into_iter().collect::<Vec<_>>(),
            vec![(d.to_owned(), true)]
        );
    }
}
