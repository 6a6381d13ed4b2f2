//! Writes the CRD YAML into `crds/` (the directory given as the only argument).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args().nth(1).map(PathBuf::from) else {
        eprintln!("usage: crdgen <output-dir>");
        return ExitCode::from(2);
    };
    for (file, crd) in kvmotion_api::crds::all() {
        let yaml = match kvmotion_api::crds::to_yaml(&crd) {
            Ok(y) => y,
            Err(e) => {
                eprintln!("crdgen: {e}: {:?}", std::error::Error::source(&e));
                return ExitCode::FAILURE;
            }
        };
        let path = dir.join(file);
        if let Err(e) = std::fs::write(&path, yaml) {
            eprintln!("crdgen: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}
