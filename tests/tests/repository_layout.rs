//! The README's "Layout" table names every top-level folder, and only
//! those, so a reader finds any part by its name in one `ls`.

use std::collections::BTreeSet;

#[test]
fn the_readme_layout_is_what_ls_shows() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let table = &readme[readme.find("## Layout").expect("a Layout section")..];
    let documented: BTreeSet<String> = table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('`').nth(1))
        .filter_map(|p| p.strip_suffix('/'))
        .map(str::to_owned)
        .collect();
    let listed: BTreeSet<String> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && n != "target")
        .collect();
    assert_eq!(documented, listed, "README.md's Layout table and the folders at the top");
}
