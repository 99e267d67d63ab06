//! `deploy/crds/` holds exactly what the types generate.

use std::path::Path;

#[test]
fn deploy_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    let update = std::env::var_os("SPIDERPOOL_UPDATE_CRDS").is_some();
    let mut stale = Vec::new();
    for (file, crd) in spiderpool_k8s::crds() {
        let path = dir.join(&file);
        let expected = spiderpool_k8s::crd_manifest(&crd);
        if update {
            std::fs::write(&path, &expected)
                .unwrap_or_else(|err| panic!("writing {}: {err}", path.display()));
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(expected.as_str()) {
            stale.push(file);
        }
    }
    assert!(
        stale.is_empty(),
        "deploy/crds/ differs from the types for {stale:?}; regenerate with \
         SPIDERPOOL_UPDATE_CRDS=1 cargo test -p spiderpool-k8s --test crds and review the diff"
    );
}
