//! The console's HTML: one shell per page (navigation, the signed-in user,
//! sign-out, an empty `<main>` the page's script fills), and the sign-in
//! page. No inline script or style: the CSP allows neither. The project id
//! and the CSRF token reach the script in `<meta>` elements.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::LoginFields;
use super::session::Session;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    Servers,
    Reset,
    Watch,
    Audit,
}

impl Page {
    const ALL: [Page; 4] = [Page::Servers, Page::Reset, Page::Watch, Page::Audit];

    pub fn named(name: &str) -> Option<Page> {
        Page::ALL.into_iter().find(|p| p.slug() == name)
    }

    fn slug(self) -> &'static str {
        match self {
            Page::Servers => "servers",
            Page::Reset => "reset",
            Page::Watch => "watch",
            Page::Audit => "audit",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Page::Servers => "Servers",
            Page::Reset => "Reset password",
            Page::Watch => "Watch",
            Page::Audit => "Audit",
        }
    }
}

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn head(title: &str, extra_meta: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"color-scheme\" content=\"light dark\">\n{extra_meta}\
         <title>{title} · ecsd console</title>\n\
         <link rel=\"stylesheet\" href=\"/console/assets/console.css\">\n\
         <script src=\"/console/assets/console.js\" defer></script>\n</head>\n",
        title = esc(title)
    )
}

/// A signed-in page's shell.
pub fn shell(page: Page, s: &Session) -> String {
    let meta = format!(
        "<meta name=\"ecsd-project\" content=\"{}\">\n<meta name=\"ecsd-csrf\" content=\"{}\">\n\
         <meta name=\"ecsd-page\" content=\"{}\">\n",
        esc(&s.token.project_id),
        esc(&s.csrf),
        page.slug()
    );
    let nav: String = Page::ALL
        .into_iter()
        .map(|p| {
            let current = if p == page {
                " aria-current=\"page\""
            } else {
                ""
            };
            format!(
                "<li><a href=\"/console/{}\"{current}>{}</a></li>",
                p.slug(),
                esc(p.title())
            )
        })
        .collect();
    format!(
        "{head}<body>\n<a class=\"skip\" href=\"#main\">Skip to content</a>\n\
         <header class=\"top\">\n<span class=\"brand\">ecsd console</span>\n\
         <nav aria-label=\"Console\"><ul>{nav}</ul></nav>\n\
         <form class=\"signout\" method=\"post\" action=\"/console/logout\">\n\
         <span class=\"who\">Signed in as <strong>{user}</strong> · project <code>{project}</code></span>\n\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\n\
         <button type=\"submit\">Sign out</button>\n</form>\n</header>\n\
         <main id=\"main\" tabindex=\"-1\">\n<h1>{title}</h1>\n\
         <div id=\"app\" data-page=\"{slug}\"><p class=\"muted\">Loading…</p></div>\n</main>\n\
         <div id=\"toast\" role=\"status\" aria-live=\"polite\"></div>\n</body>\n</html>\n",
        head = head(page.title(), &meta),
        user = esc(&s.user.name),
        project = esc(&s.token.project_id),
        csrf = esc(&s.csrf),
        title = esc(page.title()),
        slug = page.slug(),
    )
}

/// The sign-in page, with an error when a sign-in failed.
pub fn login(error: Option<&str>, f: &LoginFields) -> String {
    let error = error
        .map(|e| {
            format!(
                "<p class=\"error\" role=\"alert\" id=\"login-error\">{}</p>\n",
                esc(e)
            )
        })
        .unwrap_or_default();
    let described = if error.is_empty() {
        ""
    } else {
        " aria-describedby=\"login-error\""
    };
    format!(
        "{head}<body class=\"login\">\n<main id=\"main\">\n<h1>Sign in to the ecsd console</h1>\n\
         {error}<form method=\"post\" action=\"/console/login\" class=\"card\"{described}>\n\
         <label for=\"domain\">Domain</label>\n\
         <input id=\"domain\" name=\"domain\" required autocomplete=\"organization\" value=\"{domain}\">\n\
         <label for=\"user\">User name</label>\n\
         <input id=\"user\" name=\"user\" required autocomplete=\"username\" value=\"{user}\">\n\
         <label for=\"password\">Password</label>\n\
         <input id=\"password\" name=\"password\" type=\"password\" required autocomplete=\"current-password\">\n\
         <label for=\"project\">Project (name or id)</label>\n\
         <input id=\"project\" name=\"project\" required value=\"{project}\">\n\
         <button type=\"submit\">Sign in</button>\n</form>\n\
         <p class=\"muted\">An ecsd IAM user (see <code>ecsd admin user-create</code>; \
         <code>serve --dev</code> prints one). Access keys never enter the browser.</p>\n\
         </main>\n</body>\n</html>\n",
        head = head("Sign in", ""),
        domain = esc(&f.domain),
        user = esc(&f.user),
        project = esc(&f.project),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_content_and_attributes() {
        assert_eq!(
            esc("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn the_sign_in_page_has_no_inline_script_or_style_and_keeps_no_password() {
        let page = login(
            Some("<bad>"),
            &LoginFields {
                domain: "d\"".into(),
                user: "u".into(),
                project: "p".into(),
            },
        );
        assert!(page.contains("&lt;bad&gt;"));
        assert!(page.contains("value=\"d&quot;\""));
        assert!(!page.contains("<script>"));
        assert!(!page.contains("style="));
        assert!(!page.contains("<style"));
    }
}
