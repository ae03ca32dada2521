//! `#[rpc_api]`: declare an RPC API, on a trait or on an inherent impl
//! block, and get the router, the argument structs and a typed client.
//! The user-facing documentation is on `nova_core::rpc_api`.
//!
//! The expansion is in pieces: [`parse`] reads and checks what the user
//! wrote (every misuse is a `compile_error!` at its span), [`args`] writes
//! the argument structs, [`router`] the router, [`client`] the typed
//! client and [`periodic`] the periodic tasks.

mod args;
mod client;
mod parse;
mod periodic;
mod remote_error;
mod router;

use proc_macro::TokenStream;
use proc_macro2::TokenStream as Tokens;
use quote::{format_ident, quote};
use syn::{spanned::Spanned, ImplItem, Item, ItemImpl, ItemTrait, TraitItem, Type};

use crate::{
    client::ClientSpec,
    parse::{ApiArgs, Method, Periodic},
};

/// An error enum that travels as remote errors and comes back as itself;
/// see `nova_core::RemoteError`.
#[proc_macro_derive(RemoteError, attributes(remote))]
pub fn remote_error(item: TokenStream) -> TokenStream {
    match syn::parse::<syn::DeriveInput>(item).and_then(|input| remote_error::derive(&input)) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.into_compile_error().into(),
    }
}

/// `async_trait` for `impl Manager` (its hooks), refusing with a sentence
/// the impl of an `#[rpc_api]` trait, whose methods are plain `async fn`s
/// (with `async_trait` they would not match the trait: E0195).
#[proc_macro_attribute]
pub fn async_trait(attr: TokenStream, item: TokenStream) -> TokenStream {
    let parsed: Item = match syn::parse(item.clone()) {
        Ok(parsed) => parsed,
        Err(e) => return e.into_compile_error().into(),
    };
    if let Item::Impl(imp) = &parsed {
        let rpc_method = imp.items.iter().find_map(|it| match it {
            ImplItem::Fn(f) => f
                .sig
                .inputs
                .iter()
                .nth(1)
                .is_some_and(|a| matches!(a, syn::FnArg::Typed(t) if parse::is_context(&t.ty)))
                .then_some(f.sig.ident.span()),
            _ => None,
        });
        let is_manager =
            imp.trait_.as_ref().is_some_and(|(_, path, _)| path.segments.last().is_some_and(|s| s.ident == "Manager"));
        if let (Some(span), false) = (rpc_method, is_manager) {
            let error = syn::Error::new(
                span,
                "#[async_trait] is for `impl Manager` (its hooks); an #[rpc_api] trait is implemented with plain `async fn`s: remove #[async_trait] from this impl",
            )
            .into_compile_error();
            return quote!(#error #parsed).into();
        }
    }
    let attr = Tokens::from(attr);
    let item = Tokens::from(item);
    quote!(#[::nova_core::__private::async_trait(#attr)] #item).into()
}

/// Declare an RPC API; see `nova_core::rpc_api`.
#[proc_macro_attribute]
pub fn rpc_api(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item: Item = match syn::parse(item) {
        Ok(item) => item,
        Err(e) => return e.into_compile_error().into(),
    };
    let expanded = parse::api_args(attr.into()).and_then(|api| match item.clone() {
        Item::Trait(t) => expand_trait(api, t),
        Item::Impl(i) => expand_impl(api, i),
        other => {
            Err(syn::Error::new(other.span(), "#[rpc_api] goes on a trait (the API) or on an `impl Type { … }` block"))
        }
    });
    match expanded {
        Ok(tokens) => tokens.into(),
        // The item stays, without our attributes, so the one error is all
        // the user sees (not every use of the type failing after it).
        Err(e) => {
            let error = e.into_compile_error();
            let item = without_our_attributes(item);
            quote!(#error #item).into()
        }
    }
}

/// `item` with `#[rpc(…)]` and `#[periodic_task(…)]` removed from its
/// methods and their arguments.
fn without_our_attributes(mut item: Item) -> Item {
    let ours = |a: &syn::Attribute| a.path().is_ident("rpc") || a.path().is_ident("periodic_task");
    let strip = |attrs: &mut Vec<syn::Attribute>, sig: &mut syn::Signature| {
        attrs.retain(|a| !ours(a));
        for input in &mut sig.inputs {
            if let syn::FnArg::Typed(t) = input {
                t.attrs.retain(|a| !ours(a));
            }
        }
    };
    match &mut item {
        Item::Impl(i) => i.items.iter_mut().for_each(|it| {
            if let ImplItem::Fn(f) = it {
                strip(&mut f.attrs, &mut f.sig);
            }
        }),
        Item::Trait(t) => t.items.iter_mut().for_each(|it| {
            if let TraitItem::Fn(f) = it {
                strip(&mut f.attrs, &mut f.sig);
            }
        }),
        _ => {}
    }
    item
}

/// Where the expansion's paths point.
fn private() -> Tokens {
    quote!(::nova_core::__private)
}

fn namespace_expr(api: &ApiArgs) -> Tokens {
    match &api.namespace {
        Some(n) => quote!(::core::option::Option::Some(#n)),
        None => quote!(::core::option::Option::None),
    }
}

/// `#[rpc_api] trait XApi { … }`: the trait (with `async fn`s turned into
/// `Send` futures), a router any implementor gets, and the client.
fn expand_trait(api: ApiArgs, mut tr: ItemTrait) -> syn::Result<Tokens> {
    if let Some(serves) = &api.serves {
        return Err(syn::Error::new(serves.span(), "`serves` goes on the implementing type's impl, not on the trait"));
    }
    if !tr.generics.params.is_empty() {
        return Err(syn::Error::new(tr.generics.span(), "an API trait cannot be generic"));
    }
    let methods = trait_methods(&mut tr)?;
    methods.iter().try_for_each(|m| parse::check_since(m, &api.version))?;
    parse::check_releases(&api)?;
    let p = private();
    let (ident, version, namespace) = (&tr.ident, &api.version, namespace_expr(&api));
    let body = router::router_body(ident, &methods, version, &namespace);
    tr.supertraits.push(syn::parse_quote!(::core::marker::Send));
    tr.supertraits.push(syn::parse_quote!(::core::marker::Sync));
    tr.supertraits.push(syn::parse_quote!('static));
    tr.items.push(syn::parse_quote! {
        #[doc(hidden)]
        const __NOVA_API_VERSION: &'static str = #version;
    });
    tr.items.push(syn::parse_quote! {
        #[doc(hidden)]
        const __NOVA_API_NAMESPACE: ::core::option::Option<&'static str> = #namespace;
    });
    tr.items.push(syn::parse_quote! {
        #[doc(hidden)]
        fn __nova_rpc_router(self: &::std::sync::Arc<Self>) -> #p::Router where Self: ::core::marker::Sized { #body }
    });
    let name = ident.to_string();
    let default_client = format_ident!("{}Client", name.strip_suffix("Api").filter(|s| !s.is_empty()).unwrap_or(&name));
    let client_ident = api.client.clone().unwrap_or(default_client);
    let spec = ClientSpec {
        ident: &client_ident,
        api: ident,
        version,
        namespace: api.namespace.as_deref(),
        methods: &methods,
        releases: &api.releases,
    };
    let client = client::client(&spec);
    Ok(quote!(#tr #client))
}

/// Check and read a trait's methods, rewriting each `async fn` as a `fn`
/// returning a `Send` future (so the router can spawn it).
fn trait_methods(tr: &mut ItemTrait) -> syn::Result<Vec<Method>> {
    let mut methods = Vec::new();
    for item in &mut tr.items {
        let TraitItem::Fn(f) = item else {
            return Err(syn::Error::new(item.span(), "an API trait holds only its methods"));
        };
        let attrs = parse::take_method_attrs(&mut f.attrs)?;
        if let Some(p) = &attrs.periodic {
            return Err(syn::Error::new(
                p.span,
                "a periodic task belongs to the implementation: put it in `#[rpc_api(serves = Trait)] impl Type { … }`",
            ));
        }
        if attrs.flags.skip {
            return Err(syn::Error::new(
                attrs.flags.span.unwrap_or_else(|| f.sig.span()),
                "every method of an API trait is part of the API; keep helpers in the implementation",
            ));
        }
        if let Some(body) = &f.default {
            return Err(syn::Error::new(body.span(), "an API trait declares its methods without bodies"));
        }
        methods.push(parse::method(&mut f.sig, &attrs)?);
        if f.sig.asyncness.take().is_some() {
            let ret = match &f.sig.output {
                syn::ReturnType::Type(_, ty) => quote!(#ty),
                syn::ReturnType::Default => quote!(()),
            };
            f.sig.output = syn::parse_quote!(-> impl ::core::future::Future<Output = #ret> + ::core::marker::Send);
        }
    }
    Ok(methods)
}

/// `#[rpc_api] impl Type { … }`: the type's own API and client; or, with
/// `serves = Trait`, its periodic tasks beside the trait's API.
fn expand_impl(api: ApiArgs, mut imp: ItemImpl) -> syn::Result<Tokens> {
    if let Some((_, path, _)) = &imp.trait_ {
        return Err(syn::Error::new(
            path.span(),
            "implement an API trait with a plain impl; put #[rpc_api(serves = Trait)] on the type's own `impl Type { … }` (its periodic tasks)",
        ));
    }
    if !imp.generics.params.is_empty() {
        return Err(syn::Error::new(imp.generics.span(), "#[rpc_api] goes on an impl without generics"));
    }
    if let (Some(_), Some(span)) = (&api.serves, api.versioned) {
        return Err(syn::Error::new(span, "the version of a served API is the trait's"));
    }
    let self_ty = imp.self_ty.clone();
    let type_ident = match self_ty.as_ref() {
        Type::Path(p) => p.path.segments.last().map(|s| s.ident.clone()),
        _ => None,
    }
    .ok_or_else(|| syn::Error::new(self_ty.span(), "expected a type name"))?;
    let (methods, periodics) = impl_methods(&mut imp, api.serves.is_some())?;
    methods.iter().try_for_each(|m| parse::check_since(m, &api.version))?;
    parse::check_releases(&api)?;
    let tasks = periodic::tasks(&periodics);
    let p = private();
    let (api_impl, client) = match &api.serves {
        Some(path) => (
            quote! {
                impl ::nova_core::RpcApi for #self_ty {
                    const API_VERSION: &'static str = <Self as #path>::__NOVA_API_VERSION;
                    const NAMESPACE: ::core::option::Option<&'static str> = <Self as #path>::__NOVA_API_NAMESPACE;
                    const PACKAGE_VERSION: &'static str = ::core::env!("CARGO_PKG_VERSION");
                    fn rpc_router(self: &::std::sync::Arc<Self>) -> #p::Router {
                        <Self as #path>::__nova_rpc_router(self)
                    }
                    fn periodic_tasks(self: &::std::sync::Arc<Self>) -> ::std::vec::Vec<#p::PeriodicTask> {
                        ::std::vec![#(#tasks),*]
                    }
                }
            },
            Tokens::new(),
        ),
        None => own_api(&api, &self_ty, &type_ident, &methods, &tasks),
    };
    Ok(quote!(#imp #api_impl #client))
}

/// `RpcApi` for a type whose impl declares its methods, and its client.
fn own_api(
    api: &ApiArgs,
    self_ty: &Type,
    type_ident: &syn::Ident,
    methods: &[Method],
    tasks: &[Tokens],
) -> (Tokens, Tokens) {
    let p = private();
    let (version, namespace) = (&api.version, namespace_expr(api));
    let body = router::router_body(type_ident, methods, version, &namespace);
    let client_ident = api.client.clone().unwrap_or_else(|| format_ident!("{}Client", type_ident));
    let spec = ClientSpec {
        ident: &client_ident,
        api: type_ident,
        version,
        namespace: api.namespace.as_deref(),
        methods,
        releases: &api.releases,
    };
    let api_impl = quote! {
        impl ::nova_core::RpcApi for #self_ty {
            const API_VERSION: &'static str = #version;
            const NAMESPACE: ::core::option::Option<&'static str> = #namespace;
            const PACKAGE_VERSION: &'static str = ::core::env!("CARGO_PKG_VERSION");
            fn rpc_router(self: &::std::sync::Arc<Self>) -> #p::Router { #body }
            fn periodic_tasks(self: &::std::sync::Arc<Self>) -> ::std::vec::Vec<#p::PeriodicTask> {
                ::std::vec![#(#tasks),*]
            }
        }
    };
    (api_impl, client::client(&spec))
}

/// A periodic task and the method it runs.
type Named<T> = (syn::Ident, T);

/// An impl's RPC methods and periodic tasks. With `serving` (a trait's
/// API), it may hold periodic tasks only.
fn impl_methods(imp: &mut ItemImpl, serving: bool) -> syn::Result<(Vec<Method>, Vec<Named<Periodic>>)> {
    let mut methods = Vec::new();
    let mut periodics = Vec::new();
    for item in &mut imp.items {
        let ImplItem::Fn(f) = item else { continue };
        let attrs = parse::take_method_attrs(&mut f.attrs)?;
        if let Some(p) = attrs.periodic {
            parse::periodic(&f.sig)?;
            periodics.push((f.sig.ident.clone(), p));
            continue;
        }
        if serving {
            if let Some(span) = attrs.flags.span {
                return Err(syn::Error::new(span, "the served API's methods are declared on its trait"));
            }
            continue;
        }
        let name = f.sig.ident.to_string();
        if attrs.flags.skip || name.starts_with('_') {
            continue;
        }
        if !matches!(f.vis, syn::Visibility::Public(_)) {
            private_method(f)?;
            continue;
        }
        methods.push(parse::method(&mut f.sig, &attrs)?);
    }
    Ok((methods, periodics))
}

/// A private method that takes a `RequestContext` looks like an RPC method
/// its author forgot to make `pub`: callers would get `NoSuchMethod`.
fn private_method(f: &syn::ImplItemFn) -> syn::Result<()> {
    let takes_ctx =
        f.sig.inputs.iter().nth(1).is_some_and(|a| matches!(a, syn::FnArg::Typed(t) if parse::is_context(&t.ty)));
    if !takes_ctx {
        return Ok(());
    }
    Err(syn::Error::new(
        f.sig.ident.span(),
        format!(
            "`{}` takes a RequestContext but is not `pub`, so callers would get NoSuchMethod: make it `pub` to serve it, or mark it #[rpc(skip)] (or start its name with `_`) to keep it private",
            f.sig.ident
        ),
    ))
}
