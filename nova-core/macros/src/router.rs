//! The router: each method registered by name with its argument struct,
//! its description (argument names and types, doc), and whether it runs
//! on the blocking pool.

use proc_macro2::TokenStream as Tokens;
use quote::quote;
use syn::spanned::Spanned;

use crate::{args, parse::type_name, parse::Method};

/// Statements that add `methods` to a `router` variable, calling them on
/// `self: &Arc<Self>`.
pub(crate) fn routes(api: &syn::Ident, methods: &[Method]) -> Vec<Tokens> {
    methods.iter().map(|m| route(api, m)).collect()
}

fn route(api: &syn::Ident, m: &Method) -> Tokens {
    let p = crate::private();
    let name = &m.name;
    let name_str = name.to_string();
    let args_ident = args::ident(api, m);
    let names: Vec<_> = m.args.iter().map(|(n, _)| n).collect();
    let ctx_arg = quote!(ctx);
    let err = &m.err;
    // At the error type's span: the sentence lands on what the user wrote.
    let check = quote::quote_spanned! {err.span()=>
        fn __nova_returns<E: ::nova_core::RemoteError>() {}
        __nova_returns::<#err>();
    };
    let describe_args = m.args.iter().map(|(n, t)| {
        let (n, t) = (n.to_string(), type_name(t));
        quote!((#n, #t))
    });
    let doc = &m.doc;
    let mark_cast = m.cast.then(|| quote!(router = router.cast(#name_str);));
    let mark_since = m.since.as_ref().map(|v| quote!(router = router.since(#name_str, #v);));
    let register = if m.is_async {
        quote! {
            router = router.method(#name_str, move |ctx: #p::RequestContext, a: #args_ident| {
                let this = this.clone();
                async move { this.#name(#ctx_arg, #(a.#names),*).await.map_err(::nova_core::RemoteError::into_rpc) }
            });
        }
    } else {
        quote! {
            router = router.blocking_method(#name_str, move |ctx: #p::RequestContext, a: #args_ident| {
                this.#name(#ctx_arg, #(a.#names),*).map_err(::nova_core::RemoteError::into_rpc)
            });
        }
    };
    quote! {
        {
            #check
            let this = ::std::sync::Arc::clone(self);
            #register
        }
        router = router.describe(#name_str, &[#(#describe_args),*], #doc);
        #mark_cast
        #mark_since
    }
}

/// The body of a `fn(self: &Arc<Self>) -> Router`: argument structs, then
/// a router with every method.
pub(crate) fn router_body(api: &syn::Ident, methods: &[Method], version: &str, namespace: &Tokens) -> Tokens {
    let p = crate::private();
    let structs = methods.iter().map(|m| args::args_struct(api, m));
    let routes = routes(api, methods);
    quote! {
        #(#structs)*
        let mut router = #p::Router::new(#p::version(#version));
        let namespace: ::core::option::Option<&'static str> = #namespace;
        if let ::core::option::Option::Some(ns) = namespace {
            router = router.namespace(ns);
        }
        #(#routes)*
        router
    }
}
