//! `#[derive(RemoteError)]`: an error enum that travels as oslo remote
//! errors and comes back as itself.
//!
//! Each variant is a remote class (its name, or `#[remote(class = "…")]`);
//! its fields travel as the failure's `args` (tuple variants) or `kwargs`
//! (struct variants), so a typed client rebuilds the same variant. The
//! message is the error's `Display`, or `#[remote(message = "…")]`. One
//! variant, `#[remote(other)]`, holds an `RpcError`: what the transport
//! says, or a class this enum does not know. `#[remote(opaque)]` marks a
//! variant whose fields cannot travel (it arrives as `other`, its class
//! kept). `#[remote(module = "…")]` on the enum names the Python module
//! (default: the Rust module path, dotted).

use proc_macro2::TokenStream as Tokens;
use quote::{format_ident, quote};
use syn::{spanned::Spanned, Data, DeriveInput, Fields, LitStr};

/// What `#[remote(…)]` says of one variant.
#[derive(Default)]
struct VariantAttrs {
    class: Option<LitStr>,
    message: Option<LitStr>,
    other: bool,
    opaque: bool,
}

fn variant_attrs(attrs: &[syn::Attribute]) -> syn::Result<VariantAttrs> {
    let mut out = VariantAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("remote")) {
        attr.parse_nested_meta(|m| {
            if m.path.is_ident("class") {
                out.class = Some(m.value()?.parse()?);
            } else if m.path.is_ident("message") {
                out.message = Some(m.value()?.parse()?);
            } else if m.path.is_ident("other") {
                out.other = true;
            } else if m.path.is_ident("opaque") {
                out.opaque = true;
            } else {
                return Err(m.error("expected class = \"…\", message = \"…\", other or opaque"));
            }
            Ok(())
        })?;
    }
    Ok(out)
}

fn module(input: &DeriveInput) -> syn::Result<Tokens> {
    let mut module = None;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("remote")) {
        attr.parse_nested_meta(|m| {
            if m.path.is_ident("module") {
                module = Some(m.value()?.parse::<LitStr>()?);
                Ok(())
            } else {
                Err(m.error("on the enum, #[remote] takes module = \"python.module\""))
            }
        })?;
    }
    Ok(match module {
        Some(m) => quote!(::std::string::String::from(#m)),
        None => quote!(::core::module_path!().replace("::", ".")),
    })
}

/// The three impls; see the module docs.
pub(crate) fn derive(input: &DeriveInput) -> syn::Result<Tokens> {
    let p = crate::private();
    let Data::Enum(data) = &input.data else {
        return Err(syn::Error::new(input.ident.span(), "#[derive(RemoteError)] goes on an enum: one variant per remote class, and one #[remote(other)] variant holding an RpcError"));
    };
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new(input.generics.span(), "#[derive(RemoteError)] goes on an enum without generics"));
    }
    let ty = &input.ident;
    let module = module(input)?;
    let Arms { other, to_remote, messages, from_remote } = arms(ty, data)?;
    Ok(quote! {
        impl ::core::convert::From<#ty> for #p::RpcError {
            #[allow(unused_variables)]
            fn from(e: #ty) -> Self {
                let e = match e {
                    #ty::#other(inner) => return inner,
                    e => e,
                };
                let (class, args, kwargs): (&str, ::std::vec::Vec<#p::serde_json::Value>, #p::serde_json::Map<::std::string::String, #p::serde_json::Value>) = match &e {
                    #ty::#other(_) => ::core::unreachable!(),
                    #(#to_remote)*
                };
                let message = match &e {
                    #ty::#other(_) => ::core::unreachable!(),
                    #(#messages)*
                };
                let mut failure = #p::RemoteFailure::new(class, #module, message);
                failure.args = args;
                failure.kwargs = kwargs;
                failure.into()
            }
        }

        impl ::core::convert::From<#p::RpcError> for #ty {
            #[allow(unused_variables, clippy::redundant_closure_call)]
            fn from(e: #p::RpcError) -> Self {
                if let #p::RpcError::Remote(f) = &e {
                    let (args, kwargs) = (&f.args, &f.kwargs);
                    match f.class.as_str() {
                        #(#from_remote)*
                        _ => {}
                    }
                }
                #ty::#other(e)
            }
        }

        impl ::nova_core::RemoteError for #ty {
            fn into_rpc(self) -> #p::RpcError {
                self.into()
            }

            fn from_rpc(e: #p::RpcError) -> Self {
                e.into()
            }
        }
    })
}

/// What each variant contributes to the three impls.
struct Arms {
    /// The `#[remote(other)]` variant.
    other: syn::Ident,
    /// `Variant(..) => (class, args, kwargs)`.
    to_remote: Vec<Tokens>,
    /// `Variant(..) => message`.
    messages: Vec<Tokens>,
    /// `"Class" => rebuild`.
    from_remote: Vec<Tokens>,
}

fn arms(ty: &syn::Ident, data: &syn::DataEnum) -> syn::Result<Arms> {
    let mut other = None;
    let (mut to_remote, mut messages, mut from_remote) = (Vec::new(), Vec::new(), Vec::new());
    for v in &data.variants {
        let attrs = variant_attrs(&v.attrs)?;
        let name = &v.ident;
        if attrs.other {
            let single = matches!(&v.fields, Fields::Unnamed(f) if f.unnamed.len() == 1);
            if !single || other.is_some() {
                return Err(syn::Error::new(
                    v.span(),
                    "one #[remote(other)] variant holds the RpcError: `#[remote(other)] Rpc(RpcError)`",
                ));
            }
            other = Some(name.clone());
            continue;
        }
        let class = attrs.class.map_or_else(|| name.to_string(), |c| c.value());
        let (pattern, args, kwargs, rebuild) = variant_shape(ty, v, attrs.opaque);
        to_remote.push(quote!(#ty::#pattern => (#class, #args, #kwargs),));
        messages.push(match &attrs.message {
            Some(m) => quote!(#ty::#pattern => ::std::string::String::from(#m),),
            None => quote!(#ty::#pattern => ::std::string::ToString::to_string(&e),),
        });
        if let Some(rebuild) = rebuild {
            from_remote.push(quote!(#class => if let ::core::option::Option::Some(v) = (|| #rebuild)() { return v; },));
        }
    }
    let Some(other) = other else {
        return Err(syn::Error::new(ty.span(), "add a variant for everything else, `#[remote(other)] Rpc(RpcError)`: a typed client returns the transport's errors, and classes this enum does not know, there"));
    };
    Ok(Arms { other, to_remote, messages, from_remote })
}

/// A variant's pattern (binding its fields), its fields as `args` and
/// `kwargs`, and (unless opaque) the expression that rebuilds it from them.
fn variant_shape(ty: &syn::Ident, v: &syn::Variant, opaque: bool) -> (Tokens, Tokens, Tokens, Option<Tokens>) {
    let p = crate::private();
    let name = &v.ident;
    let to_value = |f: &Tokens| quote!(#p::serde_json::to_value(#f).unwrap_or_default());
    let none = quote!(::std::vec::Vec::new());
    let no_map = quote!(#p::serde_json::Map::new());
    match &v.fields {
        Fields::Unit => (quote!(#name), none, no_map, Some(quote!(::core::option::Option::Some(#ty::#name)))),
        Fields::Unnamed(fields) => {
            let binds: Vec<_> = (0..fields.unnamed.len()).map(|i| format_ident!("f{i}")).collect();
            let pattern = quote!(#name(#(#binds),*));
            if opaque {
                return (quote!(#name(..)), none, no_map, None);
            }
            let values = binds.iter().map(|b| to_value(&quote!(#b)));
            let types = fields.unnamed.iter().map(|f| &f.ty);
            let reads =
                types.enumerate().map(|(i, t)| quote!(#p::serde_json::from_value::<#t>(args.get(#i)?.clone()).ok()?));
            let rebuild = quote!(::core::option::Option::Some(#ty::#name(#(#reads),*)));
            (pattern, quote!(::std::vec![#(#values),*]), no_map, Some(rebuild))
        }
        Fields::Named(fields) => {
            let names: Vec<_> = fields.named.iter().filter_map(|f| f.ident.clone()).collect();
            if opaque {
                return (quote!(#name { .. }), none, no_map, None);
            }
            let keys: Vec<_> = names.iter().map(ToString::to_string).collect();
            let values = names.iter().map(|n| to_value(&quote!(#n)));
            let kwargs = quote!({
                let mut kwargs = #p::serde_json::Map::new();
                #(kwargs.insert(::std::string::String::from(#keys), #values);)*
                kwargs
            });
            let reads = fields.named.iter().zip(&keys).map(|(f, k)| {
                let (n, t) = (&f.ident, &f.ty);
                quote!(#n: #p::serde_json::from_value::<#t>(kwargs.get(#k)?.clone()).ok()?)
            });
            let rebuild = quote!(::core::option::Option::Some(#ty::#name { #(#reads),* }));
            (quote!(#name { #(#names),* }), none, kwargs, Some(rebuild))
        }
    }
}
