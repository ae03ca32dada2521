//! `#[rpc_api]`: declare a manager's RPC surface on an ordinary impl block.
//!
//! Every `pub` method whose name does not start with `_` and that takes
//! `(&self, ctx: RequestContext, args…)` becomes callable, with its
//! arguments deserialised by name (a missing, extra or mistyped argument is
//! a remote error naming it). `#[rpc(cast)]` marks a method the typed client
//! casts instead of calls; `#[rpc(blocking)]` runs a plain `fn` on tokio's
//! blocking pool; `#[rpc(skip)]` keeps a `pub` method private to Rust.
//! An `Option<T>` argument may be left out by a caller, and so may one
//! marked `#[rpc(default)]` (it gets `T::default()`, e.g. an empty list).
//! `#[periodic_task(spacing = …, run_immediately = …, enabled = …)]` marks
//! a periodic task. The macro also writes `<Type>Client`, the typed client
//! (Nova's `rpcapi.py`). See `nova_core::manager` for an example.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as Tokens};
use quote::{format_ident, quote};
use syn::{
    parse::Parser, punctuated::Punctuated, spanned::Spanned, Attribute, Expr, FnArg, GenericArgument, ImplItem,
    ImplItemFn, ItemImpl, Lit, Meta, Pat, PathArguments, ReturnType, Token, Type,
};

struct ApiArgs {
    version: String,
    namespace: Option<String>,
    client: Option<syn::Ident>,
}

fn parse_api_args(attr: Tokens) -> syn::Result<ApiArgs> {
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(attr)?;
    let mut out = ApiArgs { version: "1.0".into(), namespace: None, client: None };
    for meta in metas {
        let Meta::NameValue(nv) = &meta else {
            return Err(syn::Error::new(meta.span(), "expected key = \"value\""));
        };
        let Expr::Lit(syn::ExprLit { lit: Lit::Str(s), .. }) = &nv.value else {
            return Err(syn::Error::new(nv.value.span(), "expected a string literal"));
        };
        match nv.path.get_ident().map(ToString::to_string).as_deref() {
            Some("version") => out.version = s.value(),
            Some("namespace") => out.namespace = Some(s.value()),
            Some("client") => out.client = Some(syn::Ident::new(&s.value(), s.span())),
            _ => return Err(syn::Error::new(nv.path.span(), "expected version, namespace or client")),
        }
    }
    Ok(out)
}

#[derive(Default)]
struct RpcFlags {
    cast: bool,
    blocking: bool,
    skip: bool,
}

struct Periodic {
    spacing: Expr,
    run_immediately: Expr,
    enabled: Expr,
}

/// Remove and read our attributes from a method.
fn take_attrs(f: &mut ImplItemFn) -> syn::Result<(RpcFlags, Option<Periodic>, String)> {
    let mut flags = RpcFlags::default();
    let mut periodic = None;
    let mut doc = Vec::new();
    let mut kept: Vec<Attribute> = Vec::new();
    for attr in f.attrs.drain(..) {
        if attr.path().is_ident("rpc") {
            attr.parse_nested_meta(|m| {
                if m.path.is_ident("cast") {
                    flags.cast = true;
                } else if m.path.is_ident("blocking") {
                    flags.blocking = true;
                } else if m.path.is_ident("skip") {
                    flags.skip = true;
                } else {
                    return Err(m.error("expected cast, blocking or skip"));
                }
                Ok(())
            })?;
        } else if attr.path().is_ident("periodic_task") {
            let mut p = Periodic {
                spacing: syn::parse_quote!(0.0),
                run_immediately: syn::parse_quote!(false),
                enabled: syn::parse_quote!(true),
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
            periodic = Some(p);
        } else {
            if attr.path().is_ident("doc") {
                if let Meta::NameValue(nv) = &attr.meta {
                    if let Expr::Lit(syn::ExprLit { lit: Lit::Str(s), .. }) = &nv.value {
                        doc.push(s.value().trim().to_owned());
                    }
                }
            }
            kept.push(attr);
        }
    }
    f.attrs = kept;
    let first_paragraph = doc.iter().take_while(|l| !l.is_empty()).cloned().collect::<Vec<_>>().join(" ");
    Ok((flags, periodic, first_paragraph))
}

/// `T` of a `Result<T, E>` return type.
fn ok_type(ret: &ReturnType) -> syn::Result<Type> {
    let err = || syn::Error::new(ret.span(), "an RPC method must return Result<T, E> (E: Into<RpcError>)");
    let ReturnType::Type(_, ty) = ret else { return Err(err()) };
    let Type::Path(p) = ty.as_ref() else { return Err(err()) };
    let last = p.path.segments.last().ok_or_else(err)?;
    if last.ident != "Result" {
        return Err(err());
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else { return Err(err()) };
    match args.args.first() {
        Some(GenericArgument::Type(t)) => Ok(t.clone()),
        _ => Err(err()),
    }
}

fn type_name(ty: &Type) -> String {
    quote!(#ty).to_string().replace(' ', "").replace(',', ", ")
}

fn is_option(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == "Option"))
}

struct Method {
    name: syn::Ident,
    flags: RpcFlags,
    doc: String,
    ctx_by_ref: bool,
    args: Vec<(syn::Ident, Type)>,
    /// Arguments marked `#[rpc(default)]`: a caller may leave them out.
    defaults: Vec<syn::Ident>,
    ok: Type,
    is_async: bool,
}

/// Remove `#[rpc(default)]` from an argument; whether it was there.
fn take_default(attrs: &mut Vec<syn::Attribute>) -> syn::Result<bool> {
    let mut found = false;
    let mut error = None;
    attrs.retain(|a| {
        if !a.path().is_ident("rpc") {
            return true;
        }
        match a.parse_args::<syn::Ident>() {
            Ok(id) if id == "default" => found = true,
            _ => error = Some(syn::Error::new(a.span(), "an RPC argument takes only #[rpc(default)]")),
        }
        false
    });
    error.map_or(Ok(found), Err)
}

type Signature = (bool, Vec<(syn::Ident, Type)>, Vec<syn::Ident>);

fn read_signature(f: &mut ImplItemFn) -> syn::Result<Signature> {
    let mut defaults = Vec::new();
    for input in f.sig.inputs.iter_mut() {
        if let FnArg::Typed(t) = input {
            if take_default(&mut t.attrs)? {
                if let Pat::Ident(id) = t.pat.as_ref() {
                    defaults.push(id.ident.clone());
                }
            }
        }
    }
    let sig = &f.sig;
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(r)) if r.mutability.is_none() && (r.reference.is_some() || r.colon_token.is_some()) => {}
        _ => return Err(syn::Error::new(sig.span(), "an RPC method takes &self (or self: &Arc<Self>) first")),
    }
    let ctx_by_ref = match inputs.next() {
        Some(FnArg::Typed(t)) => matches!(t.ty.as_ref(), Type::Reference(_)),
        _ => return Err(syn::Error::new(sig.span(), "an RPC method takes `ctx: RequestContext` after &self")),
    };
    let mut args = Vec::new();
    for input in inputs {
        let FnArg::Typed(t) = input else { unreachable!("receiver only comes first") };
        let Pat::Ident(id) = t.pat.as_ref() else {
            return Err(syn::Error::new(t.pat.span(), "RPC arguments must be plain names: they are matched by name"));
        };
        args.push((id.ident.clone(), (*t.ty).clone()));
    }
    Ok((ctx_by_ref, args, defaults))
}

/// Declare a manager's RPC surface; see the crate docs.
#[proc_macro_attribute]
pub fn rpc_api(attr: TokenStream, item: TokenStream) -> TokenStream {
    match expand(attr.into(), item.into()) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand(attr: Tokens, item: Tokens) -> syn::Result<Tokens> {
    let api = parse_api_args(attr)?;
    let mut imp: ItemImpl = syn::parse2(item)?;
    if !imp.generics.params.is_empty() || imp.trait_.is_some() {
        return Err(syn::Error::new(imp.span(), "#[rpc_api] goes on a plain `impl Type { … }` without generics"));
    }
    let self_ty = imp.self_ty.clone();
    let type_ident = match self_ty.as_ref() {
        Type::Path(p) => p.path.segments.last().map(|s| s.ident.clone()),
        _ => None,
    }
    .ok_or_else(|| syn::Error::new(self_ty.span(), "expected a type name"))?;
    let client_ident = api.client.clone().unwrap_or_else(|| format_ident!("{}Client", type_ident));

    let mut methods = Vec::new();
    let mut periodics = Vec::new();
    for item in &mut imp.items {
        let ImplItem::Fn(f) = item else { continue };
        let (flags, periodic, doc) = take_attrs(f)?;
        let name = f.sig.ident.clone();
        if let Some(p) = periodic {
            periodics.push((name, p));
            continue;
        }
        let public = matches!(f.vis, syn::Visibility::Public(_));
        if !public || flags.skip || name.to_string().starts_with('_') {
            continue;
        }
        let (ctx_by_ref, args, defaults) = read_signature(f)?;
        let is_async = f.sig.asyncness.is_some();
        if flags.blocking == is_async {
            return Err(syn::Error::new(
                f.sig.span(),
                if is_async {
                    "#[rpc(blocking)] methods are plain `fn`s"
                } else {
                    "RPC methods are `async fn` (or plain `fn` with #[rpc(blocking)])"
                },
            ));
        }
        let ok = ok_type(&f.sig.output)?;
        methods.push(Method { name, flags, doc, ctx_by_ref, args, defaults, ok, is_async });
    }

    let p = quote!(::nova_core::__private);
    let version = &api.version;
    let namespace = match &api.namespace {
        Some(n) => quote!(::core::option::Option::Some(#n)),
        None => quote!(::core::option::Option::None),
    };
    let with_namespace = api.namespace.as_ref().map(|n| quote!(.with_namespace(#n)));

    let mut arg_structs = Vec::new();
    let mut routes = Vec::new();
    let mut client_fns = Vec::new();
    for m in &methods {
        let name = &m.name;
        let name_str = name.to_string();
        let args_ident = format_ident!("__{}Args_{}", type_ident, name);
        let fields = m.args.iter().map(|(n, t)| {
            let default = (is_option(t) || m.defaults.contains(n)).then(|| quote!(#[serde(default)]));
            quote!(#default #n: #t)
        });
        arg_structs.push(quote! {
            #[derive(#p::serde::Deserialize)]
            #[serde(crate = "::nova_core::__private::serde", deny_unknown_fields)]
            #[allow(non_camel_case_types)]
            struct #args_ident { #(#fields,)* }
        });
        let names: Vec<_> = m.args.iter().map(|(n, _)| n).collect();
        let ctx_arg = if m.ctx_by_ref { quote!(&ctx) } else { quote!(ctx) };
        let describe_args = m.args.iter().map(|(n, t)| {
            let (n, t) = (n.to_string(), type_name(t));
            quote!((#n, #t))
        });
        let doc = &m.doc;
        let route = if m.is_async {
            quote! {
                let this = self.clone();
                router = router.method(#name_str, move |ctx: #p::RequestContext, a: #args_ident| {
                    let this = this.clone();
                    async move { this.#name(#ctx_arg, #(a.#names),*).await }
                });
            }
        } else {
            quote! {
                let this = self.clone();
                router = router.blocking_method(#name_str, move |ctx: #p::RequestContext, a: #args_ident| {
                    this.#name(#ctx_arg, #(a.#names),*)
                });
            }
        };
        routes.push(quote! {
            { #route }
            router = router.describe(#name_str, &[#(#describe_args),*], #doc);
        });
        let params = m.args.iter().map(|(n, t)| quote!(#n: #t));
        let inserts = m.args.iter().map(|(n, _)| {
            let key = n.to_string();
            quote! {
                __args.insert(#key.to_owned(), #p::serde_json::to_value(&#n)
                    .map_err(|e| #p::RpcError::Serialization(e.to_string()))?);
            }
        });
        let ok = &m.ok;
        let doc_attr = (!m.doc.is_empty()).then(|| quote!(#[doc = #doc]));
        let body = if m.flags.cast {
            quote!(self.client.cast(ctx, #name_str, __args).await)
        } else {
            quote!(self.client.call_as::<#ok>(ctx, #name_str, __args).await)
        };
        let ret = if m.flags.cast { quote!(()) } else { quote!(#ok) };
        client_fns.push(quote! {
            #doc_attr
            pub async fn #name(&self, ctx: &#p::RequestContext, #(#params),*) -> ::core::result::Result<#ret, #p::RpcError> {
                #[allow(unused_mut)]
                let mut __args = #p::serde_json::Map::new();
                #(#inserts)*
                #body
            }
        });
    }

    let periodic_tasks = periodics.iter().map(|(name, per)| {
        let name_str = name.to_string();
        let (spacing, run_immediately, enabled) = (&per.spacing, &per.run_immediately, &per.enabled);
        quote! {
            {
                let this = self.clone();
                #p::PeriodicTask::new(#name_str, (#spacing) as f64, move || {
                    let this = this.clone();
                    ::std::boxed::Box::pin(async move {
                        this.#name(#p::RequestContext::new()).await.map_err(|e| e.to_string())
                    }) as #p::BoxFuture<::core::result::Result<(), ::std::string::String>>
                })
                .run_immediately(#run_immediately)
                .enabled(#enabled)
            }
        }
    });

    let client_doc = format!("Typed RPC client for [`{type_ident}`], pinned to API version {version}.");
    let span = Span::call_site();
    let client_vis = syn::Visibility::Public(Token![pub](span));
    Ok(quote! {
        #imp

        const _: () = {
            #(#arg_structs)*

            impl ::nova_core::RpcApi for #self_ty {
                const API_VERSION: &'static str = #version;
                const NAMESPACE: ::core::option::Option<&'static str> = #namespace;

                fn rpc_router(self: &::std::sync::Arc<Self>) -> #p::Router {
                    let mut router = #p::Router::new(#p::version(#version));
                    if let ::core::option::Option::Some(ns) = Self::NAMESPACE {
                        router = router.namespace(ns);
                    }
                    #(#routes)*
                    router
                }

                fn periodic_tasks(self: &::std::sync::Arc<Self>) -> ::std::vec::Vec<#p::PeriodicTask> {
                    ::std::vec![#(#periodic_tasks),*]
                }
            }
        };

        #[doc = #client_doc]
        #[derive(Debug, Clone)]
        #client_vis struct #client_ident {
            client: #p::RpcClient,
        }

        impl #client_ident {
            /// The API version this client sends.
            pub const VERSION: &'static str = #version;

            /// Wrap an [`RpcClient`](nova_rpc::RpcClient) aimed at the manager's topic.
            pub fn new(client: #p::RpcClient) -> Self {
                Self { client: client.with_version(#version) #with_namespace }
            }

            /// The same client, aimed at one server (`topic.host`).
            pub fn with_server(&self, host: impl ::core::convert::Into<::std::string::String>) -> Self {
                Self { client: self.client.with_server(host) }
            }

            /// The same client, to every server of the topic (casts only).
            pub fn with_fanout(&self) -> Self {
                Self { client: self.client.with_fanout(true) }
            }

            /// The same client, capped at `cap` (Nova's `version_cap`).
            pub fn with_version_cap(&self, cap: #p::Version) -> Self {
                Self { client: self.client.with_version_cap(cap) }
            }

            /// Whether `version` may be sent under the cap.
            pub fn can_send_version(&self, version: &str) -> bool {
                self.client.can_send_version(version)
            }

            /// The underlying client.
            pub fn rpc_client(&self) -> &#p::RpcClient {
                &self.client
            }

            #(#client_fns)*
        }
    })
}
