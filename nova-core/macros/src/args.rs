//! The argument structs: one per method, deserialised by name from the
//! request's `args`, so a missing, extra or mistyped argument is a remote
//! error naming it.

use proc_macro2::TokenStream as Tokens;
use quote::{format_ident, quote};

use crate::parse::{is_option, Method};

/// The struct's name for `method` of the API named `api`.
pub(crate) fn ident(api: &syn::Ident, method: &Method) -> syn::Ident {
    format_ident!("__{}Args_{}", api, method.name)
}

/// The struct for one method.
pub(crate) fn args_struct(api: &syn::Ident, m: &Method) -> Tokens {
    let p = crate::private();
    let name = ident(api, m);
    let fields = m.args.iter().map(|(n, t)| {
        let default = (is_option(t) || m.defaults.contains(n)).then(|| quote!(#[serde(default)]));
        quote!(#default #n: #t)
    });
    quote! {
        #[derive(#p::serde::Deserialize)]
        #[serde(crate = "::nova_core::__private::serde", deny_unknown_fields)]
        #[allow(non_camel_case_types)]
        struct #name { #(#fields,)* }
    }
}
