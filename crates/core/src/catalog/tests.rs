use super::*;

#[test]
fn smoke_embedded_loads() {
    let c = Catalog::embedded();
    match &c {
        Ok(c) => eprintln!("models: {}", c.models().count()),
        Err(e) => panic!("{e}"),
    }
}
