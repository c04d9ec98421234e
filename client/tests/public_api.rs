//! The library's public API names no transport type: no tonic, http, hyper, tower or prost type,
//! and no generated protobuf message, appears in a public signature, field, re-export or trait
//! implementation of a public type. Those crates are implementation details: a library user
//! must not need them (or their versions) to call the client, and they may change without a
//! breaking release of `ringcache`.
//!
//! The check parses the library's sources (not `ctl/`, the `ringctl` CLI behind the `cli`
//! feature) with `syn`. An item counts as public when its visibility is exactly `pub`: the
//! workspace's `unreachable_pub` lint keeps `pub` items of private modules reachable from the
//! crate root, so every `pub` item is part of the API. A name counts as a transport type when
//! it is written as a path through one of those crates, or imported from one of them by a `use`
//! of the same file.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use quote::ToTokens;
use syn::{ImplItem, Item, UseTree, Visibility};

/// Crates (and modules) whose types must not appear in the public API.
const FORBIDDEN_ROOTS: &[&str] = &["tonic", "http", "hyper", "hyper_util", "tower", "prost"];
/// Generated protobuf modules of `ringcache_proto` (the wire messages).
const FORBIDDEN_PROTO_MODULES: &[&str] = &["v1"];

fn library_sources() -> Vec<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&src)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    assert!(
        files.iter().any(|f| f.ends_with("client.rs")) && files.len() >= 8,
        "the library sources were not found in {}",
        src.display()
    );
    files
}

/// The names a file imports from a forbidden crate (`use tonic::{Code, Status}` gives `Code`
/// and `Status`; a module import gives the module's name or its alias).
fn forbidden_imports(file: &syn::File) -> BTreeSet<String> {
    fn walk(tree: &UseTree, path: &mut Vec<String>, names: &mut BTreeSet<String>) {
        let forbidden = |path: &[String]| {
            path.first()
                .is_some_and(|root| FORBIDDEN_ROOTS.contains(&root.as_str()))
                || (path.first().is_some_and(|root| root == "ringcache_proto")
                    && path
                        .get(1)
                        .is_some_and(|m| FORBIDDEN_PROTO_MODULES.contains(&m.as_str())))
        };
        match tree {
            UseTree::Path(p) => {
                path.push(p.ident.to_string());
                walk(&p.tree, path, names);
                path.pop();
            }
            UseTree::Name(n) => {
                let name = n.ident.to_string();
                path.push(name.clone());
                if forbidden(path) {
                    names.insert(if name == "self" {
                        path[path.len() - 2].clone()
                    } else {
                        name
                    });
                }
                path.pop();
            }
            UseTree::Rename(r) => {
                path.push(r.ident.to_string());
                if forbidden(path) {
                    names.insert(r.rename.to_string());
                }
                path.pop();
            }
            UseTree::Glob(_) => {
                assert!(
                    !forbidden(path),
                    "glob import from {path:?}: list the names"
                );
            }
            UseTree::Group(g) => {
                for tree in &g.items {
                    walk(tree, path, names);
                }
            }
        }
    }
    let mut names = BTreeSet::new();
    for item in &file.items {
        if let Item::Use(u) = item {
            walk(&u.tree, &mut Vec::new(), &mut names);
        }
    }
    names
}

/// The forbidden names that `tokens` mention.
fn mentions(tokens: &impl ToTokens, imported: &BTreeSet<String>) -> Vec<String> {
    let text = tokens.to_token_stream().to_string();
    let idents: Vec<&str> = text
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|word| !word.is_empty())
        .collect();
    let mut found = Vec::new();
    for (i, word) in idents.iter().enumerate() {
        // Written as a path through the crate: `tonic :: Status` in token text.
        let path_root = FORBIDDEN_ROOTS.contains(word) && text.contains(&format!("{word} ::"));
        let proto_module = *word == "ringcache_proto"
            && idents
                .get(i + 1)
                .is_some_and(|m| FORBIDDEN_PROTO_MODULES.contains(m));
        if path_root || proto_module || imported.contains(*word) {
            found.push((*word).to_owned());
        }
    }
    found.sort();
    found.dedup();
    found
}

fn is_pub(vis: &Visibility) -> bool {
    matches!(vis, Visibility::Public(_))
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg") && attr.to_token_stream().to_string().contains("test")
    })
}

/// The public types defined in the sources (to tell which trait implementations are public).
fn public_types(files: &[syn::File]) -> BTreeSet<String> {
    let mut types = BTreeSet::new();
    for file in files {
        for item in &file.items {
            match item {
                Item::Struct(s) if is_pub(&s.vis) => drop(types.insert(s.ident.to_string())),
                Item::Enum(e) if is_pub(&e.vis) => drop(types.insert(e.ident.to_string())),
                _ => {}
            }
        }
    }
    types
}

/// Every leak in `items`: `where` names the item, `what` the forbidden names.
fn leaks_in(
    items: &[Item],
    imported: &BTreeSet<String>,
    public: &BTreeSet<String>,
    file: &str,
    leaks: &mut Vec<String>,
) {
    let mut nested: Vec<&[Item]> = Vec::new();
    let mut check = |what: String, tokens: &dyn Fn() -> proc_macro2::TokenStream| {
        let found = mentions(&tokens(), imported);
        if !found.is_empty() {
            leaks.push(format!("{file}: {what} mentions {}", found.join(", ")));
        }
    };
    for item in items {
        match item {
            Item::Fn(f) if is_pub(&f.vis) && !is_cfg_test(&f.attrs) => {
                check(format!("fn {}", f.sig.ident), &|| f.sig.to_token_stream());
            }
            Item::Struct(s) if is_pub(&s.vis) => {
                check(format!("struct {} generics", s.ident), &|| {
                    s.generics.to_token_stream()
                });
                for field in s.fields.iter().filter(|f| is_pub(&f.vis)) {
                    check(format!("struct {} field", s.ident), &|| {
                        field.to_token_stream()
                    });
                }
            }
            Item::Enum(e) if is_pub(&e.vis) => {
                check(format!("enum {}", e.ident), &|| e.to_token_stream());
            }
            Item::Type(t) if is_pub(&t.vis) => {
                check(format!("type {}", t.ident), &|| t.to_token_stream());
            }
            Item::Trait(t) if is_pub(&t.vis) => {
                check(format!("trait {}", t.ident), &|| t.to_token_stream());
            }
            Item::Use(u) if is_pub(&u.vis) => {
                check("pub use".to_owned(), &|| u.to_token_stream());
            }
            Item::Const(c) if is_pub(&c.vis) => {
                check(format!("const {}", c.ident), &|| c.ty.to_token_stream());
            }
            Item::Static(s) if is_pub(&s.vis) => {
                check(format!("static {}", s.ident), &|| s.ty.to_token_stream());
            }
            Item::Impl(i) if !is_cfg_test(&i.attrs) => {
                let self_ty = i.self_ty.to_token_stream().to_string();
                let self_name = self_ty.split_whitespace().next().unwrap_or("").to_owned();
                if !public.contains(&self_name) {
                    continue;
                }
                if let Some((_, trait_path, _)) = &i.trait_ {
                    check(
                        format!("impl {} for {self_name}", trait_path.to_token_stream()),
                        &|| {
                            let mut tokens = i.generics.to_token_stream();
                            tokens.extend(trait_path.to_token_stream());
                            tokens
                        },
                    );
                    continue;
                }
                for member in &i.items {
                    if let ImplItem::Fn(f) = member
                        && is_pub(&f.vis)
                        && !is_cfg_test(&f.attrs)
                    {
                        check(format!("{self_name}::{}", f.sig.ident), &|| {
                            let mut tokens = i.generics.to_token_stream();
                            tokens.extend(f.sig.to_token_stream());
                            tokens
                        });
                    }
                }
            }
            Item::Mod(m) if !is_cfg_test(&m.attrs) => {
                if let Some((_, inner)) = &m.content {
                    nested.push(inner);
                }
            }
            _ => {}
        }
    }
    for inner in nested {
        leaks_in(inner, imported, public, file, leaks);
    }
}

#[test]
fn no_transport_type_is_part_of_the_public_api() {
    let paths = library_sources();
    let files: Vec<syn::File> = paths
        .iter()
        .map(|path| {
            syn::parse_file(&std::fs::read_to_string(path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect();
    let public = public_types(&files);
    assert!(
        public.contains("Error") && public.contains("ClientBuilder"),
        "{public:?}"
    );
    let mut leaks = Vec::new();
    for (path, file) in paths.iter().zip(&files) {
        let name = path.file_name().unwrap().to_string_lossy();
        leaks_in(
            &file.items,
            &forbidden_imports(file),
            &public,
            &name,
            &mut leaks,
        );
    }
    assert!(
        leaks.is_empty(),
        "transport types in the public API:\n{}",
        leaks.join("\n")
    );
}

#[test]
fn the_check_finds_the_leaks_it_is_meant_to_find() {
    let source = r#"
        use tonic::{Code, Status, transport::Channel};
        use ringcache_proto::v1 as pb;
        pub enum Error { Server { code: Code, message: String }, Other(String) }
        impl From<Status> for Error { fn from(_: Status) -> Self { todo!() } }
        pub struct ClientBuilder { pub factory: Option<String>, hidden: Channel }
        impl ClientBuilder {
            pub fn channel_factory<F>(self, f: F) -> Self where F: Fn(&str) -> Channel { self }
            pub fn raw(&self) -> pb::GetRequest { todo!() }
            pub fn fine(&self) -> Option<String> { None }
            pub(crate) fn internal(&self) -> Channel { todo!() }
            fn private(&self) -> tonic::Status { todo!() }
        }
        pub fn endpoint() -> tonic::transport::Endpoint { todo!() }
        pub(crate) struct NodeChannel { pub inner: Channel }
    "#;
    let file = syn::parse_file(source).unwrap();
    let public = public_types(std::slice::from_ref(&file));
    let mut leaks = Vec::new();
    leaks_in(
        &file.items,
        &forbidden_imports(&file),
        &public,
        "sample.rs",
        &mut leaks,
    );
    let leaks = leaks.join("\n");
    for expected in [
        "enum Error mentions Code",
        "impl From < Status > for Error mentions Status",
        "ClientBuilder::channel_factory mentions Channel",
        "ClientBuilder::raw mentions pb",
        "fn endpoint mentions tonic",
    ] {
        assert!(leaks.contains(expected), "{expected:?} not in:\n{leaks}");
    }
    for fine in ["fine", "internal", "private", "NodeChannel", "field"] {
        assert!(!leaks.contains(fine), "{fine:?} wrongly in:\n{leaks}");
    }
}
