//! Reading files and directories.

use std::fs;
use std::path::{Path, PathBuf};

use super::super::*;

/// A scratch directory named after the test, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(test: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("controlplane-k8s-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn write(&self, name: &str, text: &str) -> &Self {
        fs::write(self.0.join(name), text).unwrap();
        self
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn namespace(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n---\n")
}

#[test]
fn reads_yaml_files_in_name_order_and_nothing_else() {
    let dir = ScratchDir::new("order");
    dir.write("b.yml", &namespace("b"))
        .write("a.yaml", &namespace("a"))
        .write("c.txt", "not: [yaml")
        .write("d.yaml.bak", "not: [yaml");
    fs::create_dir(dir.path().join("sub.yaml")).unwrap();
    fs::write(dir.path().join("sub.yaml/x.yaml"), "not: [yaml").unwrap();
    let cluster = load_dir(dir.path()).unwrap();
    let names: Vec<&str> = cluster.namespaces().map(|n| n.meta.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    let a = cluster
        .location(&ObjectRef {
            kind: Kind::Namespace,
            namespace: String::new(),
            name: "a".to_owned(),
        })
        .unwrap();
    assert!(a.file.ends_with("a.yaml") && a.document == 1, "{a}");
}

#[test]
fn a_duplicate_across_files_names_both_places() {
    let dir = ScratchDir::new("duplicate");
    dir.write("1.yaml", &namespace("a"))
        .write("2.yaml", &format!("{}{}", namespace("b"), namespace("a")));
    let error = load_dir(dir.path()).unwrap_err();
    let LoadError::Duplicate {
        object,
        first,
        second,
    } = &error
    else {
        panic!("{error}");
    };
    assert_eq!(object.to_string(), "Namespace a");
    assert!(first.file.ends_with("1.yaml") && first.document == 1);
    assert!(second.file.ends_with("2.yaml") && second.document == 2);
}

#[test]
fn an_invalid_document_fails_the_whole_directory() {
    let dir = ScratchDir::new("invalid");
    dir.write("a.yaml", &namespace("a")).write(
        "b.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: B}\n",
    );
    let error = load_dir(dir.path()).unwrap_err().to_string();
    assert!(
        error.ends_with(
            "b.yaml: document 1: metadata.name: \"B\" is not a valid name: lower-case letters, \
         digits and '-', at most 63, starting and ending alphanumeric"
        ),
        "{error}"
    );
}

#[test]
fn unreadable_sources_are_typed_errors() {
    let dir = ScratchDir::new("unreadable");
    let missing = dir.path().join("missing");
    assert!(matches!(load_dir(&missing), Err(LoadError::ReadDir { .. })));
    assert!(matches!(load_file(&missing), Err(LoadError::Read { .. })));
    fs::write(dir.path().join("bin.yaml"), [0xff, 0xfe, b'\n']).unwrap();
    assert!(matches!(load_dir(dir.path()), Err(LoadError::Read { .. })));
}

#[test]
fn a_syntax_error_names_the_document() {
    let error =
        Cluster::parse("s.yaml", &format!("{}key: [unclosed\n", namespace("a"))).unwrap_err();
    let LoadError::Syntax { location, .. } = &error else {
        panic!("{error}");
    };
    assert_eq!(location.to_string(), "s.yaml: document 2");
    let source = std::error::Error::source(&error).unwrap().to_string();
    assert!(
        source.contains("line"),
        "the cause gives the position: {source}"
    );
}
