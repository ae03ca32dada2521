//! Reading what the user wrote: the attribute's arguments, our attributes
//! on methods and arguments, and a method's signature, with a clear error
//! at the right span for every misuse.

use proc_macro2::TokenStream as Tokens;
use quote::quote;
use syn::{
    parse::Parser, punctuated::Punctuated, spanned::Spanned, Attribute, Expr, FnArg, GenericArgument, Lit, Meta, Pat,
    PathArguments, ReturnType, Signature, Token, Type,
};

/// `#[rpc_api(version = "1.2", namespace = "…", client = "Name", serves = Trait)]`.
pub(crate) struct ApiArgs {
    pub(crate) version: String,
    pub(crate) namespace: Option<String>,
    pub(crate) client: Option<syn::Ident>,
    /// On an inherent impl: the API trait the type implements (the impl
    /// then holds only its periodic tasks).
    pub(crate) serves: Option<syn::Path>,
    /// Whether `version` was given.
    pub(crate) versioned: Option<proc_macro2::Span>,
    /// Release names an operator may pin to (`releases = "epoxy=1.0"`).
    pub(crate) releases: Vec<(String, String)>,
    /// Where `releases` was written, for errors about it.
    pub(crate) releases_lit: Option<syn::LitStr>,
}

pub(crate) fn api_args(attr: Tokens) -> syn::Result<ApiArgs> {
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(attr)?;
    let mut out = ApiArgs {
        version: "1.0".into(),
        namespace: None,
        client: None,
        serves: None,
        versioned: None,
        releases: Vec::new(),
        releases_lit: None,
    };
    for meta in metas {
        let Meta::NameValue(nv) = &meta else {
            return Err(syn::Error::new(meta.span(), "expected `key = value`"));
        };
        if nv.path.is_ident("serves") {
            let Expr::Path(p) = &nv.value else {
                return Err(syn::Error::new(nv.value.span(), "`serves` names the API trait: `serves = ComputeApi`"));
            };
            out.serves = Some(p.path.clone());
            continue;
        }
        let Expr::Lit(syn::ExprLit { lit: Lit::Str(s), .. }) = &nv.value else {
            return Err(syn::Error::new(nv.value.span(), "expected a string literal"));
        };
        match nv.path.get_ident().map(ToString::to_string).as_deref() {
            Some("version") => {
                check_version(s)?;
                out.version = s.value();
                out.versioned = Some(s.span());
            }
            Some("namespace") => out.namespace = Some(s.value()),
            Some("client") => out.client = Some(syn::Ident::new(&s.value(), s.span())),
            Some("releases") => {
                for pair in s.value().split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    let (name, version) = pair.split_once('=').ok_or_else(|| {
                        syn::Error::new(
                            s.span(),
                            format!("releases are name=version pairs, comma separated; {pair:?} has no ="),
                        )
                    })?;
                    check_version(&syn::LitStr::new(version.trim(), s.span()))?;
                    out.releases.push((name.trim().to_owned(), version.trim().to_owned()));
                }
                out.releases_lit = Some(s.clone());
            }
            _ => {
                return Err(syn::Error::new(nv.path.span(), "expected version, namespace, client, releases or serves"))
            }
        }
    }
    Ok(out)
}

/// Each release names a version of this API (the same major, no newer).
pub(crate) fn check_releases(api: &ApiArgs) -> syn::Result<()> {
    let (Some(lit), Some(newest)) = (&api.releases_lit, version_pair(&api.version)) else { return Ok(()) };
    for (name, version) in &api.releases {
        let ok = version_pair(version).is_some_and(|v| v.0 == newest.0 && v <= newest);
        if !ok {
            return Err(syn::Error::new(
                lit.span(),
                format!("release {name} = {version} is not a version of this API ({}.0 to {})", newest.0, api.version),
            ));
        }
    }
    Ok(())
}

/// A version is `major.minor`, both numbers.
fn check_version(s: &syn::LitStr) -> syn::Result<()> {
    let value = s.value();
    let ok = value.split_once('.').is_some_and(|(major, minor)| {
        [major, minor].iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    });
    if ok {
        Ok(())
    } else {
        Err(syn::Error::new(s.span(), format!("an API version is \"major.minor\" (e.g. \"1.0\"), not {value:?}")))
    }
}

/// `#[rpc(cast, blocking, skip)]` on a method.
#[derive(Default)]
pub(crate) struct RpcFlags {
    pub(crate) cast: bool,
    /// A cast whose value callers who call it get (`#[rpc(cast, callable)]`).
    pub(crate) callable: bool,
    /// The version that added the method (`#[rpc(since = "1.1")]`).
    pub(crate) since: Option<syn::LitStr>,
    pub(crate) blocking: bool,
    pub(crate) skip: bool,
    /// Where the attribute was, for errors about it.
    pub(crate) span: Option<proc_macro2::Span>,
}

/// `#[periodic_task(spacing = …, run_immediately = …, enabled = …)]`.
pub(crate) struct Periodic {
    pub(crate) spacing: Expr,
    pub(crate) run_immediately: Expr,
    pub(crate) enabled: Expr,
    pub(crate) span: proc_macro2::Span,
}

/// Our attributes on a method, removed from it, and its doc's first paragraph.
pub(crate) struct MethodAttrs {
    pub(crate) flags: RpcFlags,
    pub(crate) periodic: Option<Periodic>,
    pub(crate) doc: String,
}

pub(crate) fn take_method_attrs(attrs: &mut Vec<Attribute>) -> syn::Result<MethodAttrs> {
    let mut flags = RpcFlags::default();
    let mut periodic = None;
    let mut doc = Vec::new();
    let mut kept = Vec::new();
    for attr in attrs.drain(..) {
        if attr.path().is_ident("rpc") {
            flags.span = Some(attr.path().span());
            attr.parse_nested_meta(|m| {
                if m.path.is_ident("cast") {
                    flags.cast = true;
                } else if m.path.is_ident("callable") {
                    flags.callable = true;
                } else if m.path.is_ident("since") {
                    let v: syn::LitStr = m.value()?.parse()?;
                    check_version(&v)?;
                    flags.since = Some(v);
                } else if m.path.is_ident("blocking") {
                    flags.blocking = true;
                } else if m.path.is_ident("skip") {
                    flags.skip = true;
                } else {
                    return Err(m.error("expected cast, callable, blocking, skip or since = \"1.1\""));
                }
                Ok(())
            })?;
        } else if attr.path().is_ident("periodic_task") {
            periodic = Some(periodic_args(&attr)?);
        } else {
            if let Some(line) = doc_line(&attr) {
                doc.push(line);
            }
            kept.push(attr);
        }
    }
    *attrs = kept;
    let doc = doc.iter().take_while(|l| !l.is_empty()).cloned().collect::<Vec<_>>().join(" ");
    Ok(MethodAttrs { flags, periodic, doc })
}

fn doc_line(attr: &Attribute) -> Option<String> {
    let Meta::NameValue(nv) = &attr.meta else { return None };
    if !attr.path().is_ident("doc") {
        return None;
    }
    match &nv.value {
        Expr::Lit(syn::ExprLit { lit: Lit::Str(s), .. }) => Some(s.value().trim().to_owned()),
        _ => None,
    }
}

fn periodic_args(attr: &Attribute) -> syn::Result<Periodic> {
    let mut p = Periodic {
        spacing: syn::parse_quote!(0.0),
        run_immediately: syn::parse_quote!(false),
        enabled: syn::parse_quote!(true),
        span: attr.path().span(),
    };
    if !matches!(attr.meta, Meta::Path(_)) {
        attr.parse_nested_meta(|m| {
            let value: Expr = m.value()?.parse()?;
            if m.path.is_ident("spacing") {
                p.spacing = value;
            } else if m.path.is_ident("run_immediately") {
                p.run_immediately = value;
            } else if m.path.is_ident("enabled") {
                p.enabled = value;
            } else {
                return Err(m.error("expected spacing, run_immediately or enabled"));
            }
            Ok(())
        })?;
    }
    Ok(p)
}

/// One RPC method, as the argument struct, router and client need it.
pub(crate) struct Method {
    pub(crate) name: syn::Ident,
    pub(crate) cast: bool,
    pub(crate) doc: String,
    pub(crate) args: Vec<(syn::Ident, Type)>,
    /// Arguments marked `#[rpc(default)]`: a caller may leave them out.
    pub(crate) defaults: Vec<syn::Ident>,
    /// The method's own version (`#[rpc(since = "1.1")]`); none: the API's first.
    pub(crate) since: Option<syn::LitStr>,
    /// Arguments added after their method (`#[rpc(since = "1.2")]`).
    pub(crate) args_since: Vec<(syn::Ident, syn::LitStr)>,
    pub(crate) ok: Type,
    /// `E` of its `Result<T, E>`: what the typed client returns too.
    pub(crate) err: Type,
    pub(crate) is_async: bool,
}

/// Read and check an RPC method's signature (removing `#[rpc(default)]`
/// from its arguments).
pub(crate) fn method(sig: &mut Signature, attrs: &MethodAttrs) -> syn::Result<Method> {
    let (defaults, args_since) = take_arg_attrs(sig)?;
    no_generics(sig, "an RPC method")?;
    let is_async = sig.asyncness.is_some();
    match (attrs.flags.blocking, sig.asyncness) {
        (true, Some(a)) => {
            return Err(syn::Error::new(
                a.span(),
                "#[rpc(blocking)] runs a plain `fn` on the blocking pool: remove `async`, or remove `blocking`",
            ))
        }
        (false, None) => {
            return Err(syn::Error::new(
                sig.fn_token.span(),
                "an RPC method is an `async fn`; a plain `fn` needs #[rpc(blocking)]",
            ))
        }
        _ => {}
    }
    receiver_and_ctx(sig)?;
    let mut args = Vec::new();
    for input in sig.inputs.iter().skip(2) {
        let FnArg::Typed(t) = input else { unreachable!("the receiver only comes first") };
        let Pat::Ident(id) = t.pat.as_ref() else {
            return Err(syn::Error::new(t.pat.span(), "RPC arguments must be plain names: callers pass them by name"));
        };
        if type_name(&t.ty).contains('&') {
            return Err(syn::Error::new(
                t.ty.span(),
                format!(
                    "`{}` is borrowed: RPC arguments are deserialised into values the method owns, so take an owned type (`String` for `&str`, `Vec<T>` for `&[T]`)",
                    id.ident
                ),
            ));
        }
        args.push((id.ident.clone(), (*t.ty).clone()));
    }
    for (name, since) in &args_since {
        let optional = args.iter().any(|(n, t)| n == name && is_option(t)) || defaults.contains(name);
        if !optional {
            return Err(syn::Error::new(
                since.span(),
                format!("`{name}` came after its method, so older callers leave it out: make it Option<T>, or add #[rpc(default)]"),
            ));
        }
    }
    let (ok, err) = result_types(sig, "an RPC method returns Result<T, E> (T: Serialize, E: nova_core::RemoteError)")?;
    let unit = matches!(&ok, Type::Tuple(t) if t.elems.is_empty());
    if attrs.flags.cast && !unit && !attrs.flags.callable {
        return Err(syn::Error::new(
            ok.span(),
            "a cast's caller gets nothing back: return Result<(), E>, make it a call (remove #[rpc(cast)]), or, when other callers call it for this value, write #[rpc(cast, callable)]",
        ));
    }
    if attrs.flags.callable && !attrs.flags.cast {
        return Err(syn::Error::new(
            attrs.flags.span.unwrap_or_else(|| sig.span()),
            "#[rpc(callable)] goes with cast: a method without it is called already",
        ));
    }
    Ok(Method {
        name: sig.ident.clone(),
        cast: attrs.flags.cast,
        doc: attrs.doc.clone(),
        args,
        defaults,
        since: attrs.flags.since.clone(),
        args_since,
        ok,
        err,
        is_async,
    })
}

/// Check a periodic task's signature: `async fn(&self, ctx: RequestContext) -> Result<(), E>`.
pub(crate) fn periodic(sig: &Signature) -> syn::Result<()> {
    no_generics(sig, "a periodic task")?;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(sig.fn_token.span(), "a periodic task is an `async fn`"));
    }
    receiver_and_ctx(sig)?;
    if let Some(extra) = sig.inputs.iter().nth(2) {
        return Err(syn::Error::new(extra.span(), "a periodic task takes only `&self` and `ctx: RequestContext`"));
    }
    result_types(sig, "a periodic task returns Result<(), E> (E: Display): its errors are logged").map(|_| ())
}

fn no_generics(sig: &Signature, what: &str) -> syn::Result<()> {
    if sig.generics.params.is_empty() && sig.generics.where_clause.is_none() {
        return Ok(());
    }
    Err(syn::Error::new(
        sig.generics.span(),
        format!("{what} cannot be generic: callers send JSON, which is read into one concrete type per argument"),
    ))
}

/// `&self` (or `self: &Arc<Self>`), then `ctx: RequestContext`, by value.
fn receiver_and_ctx(sig: &Signature) -> syn::Result<()> {
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(r)) if r.mutability.is_none() && (r.reference.is_some() || r.colon_token.is_some()) => {}
        Some(other) => {
            return Err(syn::Error::new(other.span(), "an RPC method takes `&self` (or `self: &Arc<Self>`) first"))
        }
        None => {
            return Err(syn::Error::new(
                sig.paren_token.span.join(),
                "an RPC method takes `&self` (or `self: &Arc<Self>`) first",
            ))
        }
    }
    let missing = "an RPC method takes `ctx: RequestContext` right after `&self` (the caller's request context)";
    match inputs.next() {
        Some(FnArg::Typed(t)) if is_context(&t.ty) => match t.ty.as_ref() {
            Type::Reference(r) => Err(syn::Error::new(
                r.span(),
                "take `ctx: RequestContext` by value: each request's context is the method's own (clone it to keep it)",
            )),
            _ => Ok(()),
        },
        Some(FnArg::Typed(t)) => {
            Err(syn::Error::new(t.ty.span(), format!("{missing}; found `{}` here", type_name(&t.ty))))
        }
        _ => Err(syn::Error::new(sig.paren_token.span.join(), missing)),
    }
}

/// Whether `ty` is `RequestContext` or `&RequestContext` (by any path).
pub(crate) fn is_context(ty: &Type) -> bool {
    let ty = match ty {
        Type::Reference(r) => r.elem.as_ref(),
        other => other,
    };
    matches!(ty, Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == "RequestContext"))
}

/// What `#[rpc(…)]` says of a method's arguments: those a caller may leave
/// out (`default`), and those added in a later version (`since`).
type ArgAttrs = (Vec<syn::Ident>, Vec<(syn::Ident, syn::LitStr)>);

fn take_arg_attrs(sig: &mut Signature) -> syn::Result<ArgAttrs> {
    let (mut defaults, mut since) = (Vec::new(), Vec::new());
    for input in sig.inputs.iter_mut() {
        let FnArg::Typed(t) = input else { continue };
        let (default, added) = take_arg_attr(&mut t.attrs)?;
        if let Pat::Ident(id) = t.pat.as_ref() {
            if default {
                defaults.push(id.ident.clone());
            }
            if let Some(v) = added {
                since.push((id.ident.clone(), v));
            }
        }
    }
    Ok((defaults, since))
}

/// Remove `#[rpc(default)]` and `#[rpc(since = "…")]` from an argument.
fn take_arg_attr(attrs: &mut Vec<Attribute>) -> syn::Result<(bool, Option<syn::LitStr>)> {
    let (mut default, mut since) = (false, None);
    let mut error = None;
    attrs.retain(|a| {
        if !a.path().is_ident("rpc") {
            return true;
        }
        let parsed = a.parse_nested_meta(|m| {
            if m.path.is_ident("default") {
                default = true;
                Ok(())
            } else if m.path.is_ident("since") {
                let v: syn::LitStr = m.value()?.parse()?;
                check_version(&v)?;
                since = Some(v);
                Ok(())
            } else {
                Err(m.error("an RPC argument takes #[rpc(default)] and #[rpc(since = \"1.2\")]"))
            }
        });
        if let Err(e) = parsed {
            error = Some(e);
        }
        false
    });
    error.map_or(Ok((default, since)), Err)
}

/// `major.minor` as numbers.
fn version_pair(v: &str) -> Option<(u32, u32)> {
    let (major, minor) = v.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Check the `since` versions of a method and its arguments against its
/// API's `version`: the same major, no newer than the API, and an
/// argument newer than its method.
pub(crate) fn check_since(m: &Method, version: &str) -> syn::Result<()> {
    let Some(api) = version_pair(version) else { return Ok(()) };
    let method = m.since.as_ref().and_then(|s| version_pair(&s.value())).unwrap_or((api.0, 0));
    let mut all: Vec<(&syn::LitStr, &str)> = m.args_since.iter().map(|(_, v)| (v, "an argument")).collect();
    all.extend(m.since.iter().map(|v| (v, "a method")));
    for (lit, what) in all {
        let Some(v) = version_pair(&lit.value()) else { continue };
        if v.0 != api.0 || v > api {
            let range = format!("{}.0 to {version}", api.0);
            return Err(syn::Error::new(
                lit.span(),
                format!("{what} since {} is not in this API (version {version}): since is from {range}", lit.value()),
            ));
        }
        if what == "an argument" && v <= method {
            return Err(syn::Error::new(
                lit.span(),
                format!(
                    "this argument came with its method ({}.{}): since names a later version, or leave it out",
                    method.0, method.1
                ),
            ));
        }
    }
    Ok(())
}

/// `T` and `E` of a `Result<T, E>` return type.
fn result_types(sig: &Signature, message: &str) -> syn::Result<(Type, Type)> {
    let span = match &sig.output {
        ReturnType::Default => sig.paren_token.span.join(),
        ReturnType::Type(_, ty) => ty.span(),
    };
    let err = || syn::Error::new(span, message);
    let ReturnType::Type(_, ty) = &sig.output else { return Err(err()) };
    let Type::Path(p) = ty.as_ref() else { return Err(err()) };
    let last = p.path.segments.last().ok_or_else(err)?;
    if last.ident != "Result" {
        return Err(err());
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else { return Err(err()) };
    let mut types = args.args.iter().filter_map(|a| match a {
        GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    });
    match (types.next(), types.next()) {
        (Some(ok), Some(err)) => Ok((ok, err)),
        _ => Err(err()),
    }
}

/// A type as text, e.g. `Vec<String>` (shown in method descriptions).
pub(crate) fn type_name(ty: &Type) -> String {
    quote!(#ty).to_string().replace(' ', "").replace(',', ", ")
}

/// Whether a caller may leave the argument out (`Option<T>`).
pub(crate) fn is_option(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == "Option"))
}
