//! Built-in tool → scope maps for MCP servers whose per-tool scope needs are published, so a
//! service pointed at one gets a scope audit without writing `[services.X.tools]` by hand.
//!
//! Only servers that document each tool's OAuth scopes are here. GitHub's MCP server does
//! (its README's "Required OAuth Scopes" per tool, and `pkg/scopes` in
//! github/github-mcp-server). Google's Workspace, Slack's and Microsoft's hosted MCP servers
//! publish one scope list per server, not per tool, so they have no map: their services report
//! "no tool map" until one is configured.

type ToolMap = &'static [(&'static str, &'static [&'static str])];

/// Every built-in map, by the name `tool_map = "…"` selects.
const MAPS: &[(&str, ToolMap)] = &[("github-mcp-server", GITHUB_MCP_SERVER)];

pub fn by_name(name: &str) -> Option<ToolMap> {
    MAPS.iter().find(|(n, _)| *n == name).map(|(_, m)| *m)
}

/// The names `tool_map` accepts, for error messages.
pub fn names() -> String {
    let names: Vec<&str> = MAPS.iter().map(|(n, _)| *n).collect();
    names.join(", ")
}

/// The built-in map to use when a service names none: by the well-known URL of the hosted
/// server it points at.
pub fn for_url(url: &url::Url) -> Option<&'static str> {
    match url.host_str()? {
        "api.githubcopilot.com" => Some("github-mcp-server"),
        _ => None,
    }
}

const REPO: &[&str] = &["repo"];
const SECURITY_EVENTS: &[&str] = &["security_events"];
const READ_ORG: &[&str] = &["read:org"];
const NOTIFICATIONS: &[&str] = &["notifications"];
const NONE: &[&str] = &[];

/// github/github-mcp-server, by toolset. Scopes a tool lists are all required; a broader scope
/// satisfies a narrower one through the GitHub hierarchy in `scopes.rs` (`repo` ⊃
/// `security_events`, `admin:org` ⊃ `write:org` ⊃ `read:org`, `project` ⊃ `read:project`).
/// Left out on purpose: `list_issue_fields`, `list_issue_types` and `ui_get`, which accept
/// `repo` *or* `read:org` (an either-or the audit's all-of model would misreport), and the
/// remote-only Copilot tools, which list no scopes.
const GITHUB_MCP_SERVER: &[(&str, &[&str])] = &[
    // actions
    ("actions_get", REPO),
    ("actions_list", REPO),
    ("actions_run_trigger", REPO),
    ("get_job_logs", REPO),
    // code quality and security
    ("get_code_quality_finding", REPO),
    ("get_code_scanning_alert", SECURITY_EVENTS),
    ("list_code_scanning_alerts", SECURITY_EVENTS),
    ("get_dependabot_alert", SECURITY_EVENTS),
    ("list_dependabot_alerts", SECURITY_EVENTS),
    ("get_secret_scanning_alert", SECURITY_EVENTS),
    ("list_secret_scanning_alerts", SECURITY_EVENTS),
    ("get_global_security_advisory", SECURITY_EVENTS),
    ("list_global_security_advisories", SECURITY_EVENTS),
    ("list_org_repository_security_advisories", SECURITY_EVENTS),
    ("list_repository_security_advisories", SECURITY_EVENTS),
    // context and orgs
    ("get_me", NONE),
    ("get_team_members", READ_ORG),
    ("get_teams", READ_ORG),
    ("search_orgs", READ_ORG),
    // copilot
    ("assign_copilot_to_issue", REPO),
    ("request_copilot_review", REPO),
    // discussions
    ("discussion_comment_write", REPO),
    ("get_discussion", REPO),
    ("get_discussion_comments", REPO),
    ("list_discussion_categories", REPO),
    ("list_discussions", REPO),
    // gists
    ("create_gist", &["gist"]),
    ("update_gist", &["gist"]),
    ("get_gist", NONE),
    ("list_gists", NONE),
    // git, issues, labels
    ("get_repository_tree", REPO),
    ("add_issue_comment", REPO),
    ("issue_read", REPO),
    ("issue_write", REPO),
    ("list_issues", REPO),
    ("search_issues", REPO),
    ("sub_issue_write", REPO),
    ("get_label", REPO),
    ("label_write", REPO),
    ("list_label", REPO),
    // notifications
    ("dismiss_notification", NOTIFICATIONS),
    ("get_notification_details", NOTIFICATIONS),
    ("list_notifications", NOTIFICATIONS),
    ("manage_notification_subscription", NOTIFICATIONS),
    ("manage_repository_notification_subscription", NOTIFICATIONS),
    ("mark_all_notifications_read", NOTIFICATIONS),
    // projects
    ("projects_get", &["read:project"]),
    ("projects_list", &["read:project"]),
    ("projects_write", &["project"]),
    // pull requests
    ("add_comment_to_pending_review", REPO),
    ("add_reply_to_pull_request_comment", REPO),
    ("create_pull_request", REPO),
    ("list_pull_requests", REPO),
    ("merge_pull_request", REPO),
    ("pull_request_read", REPO),
    ("pull_request_review_write", REPO),
    ("search_pull_requests", REPO),
    ("update_pull_request", REPO),
    ("update_pull_request_branch", REPO),
    // repos
    ("create_branch", REPO),
    ("create_or_update_file", REPO),
    ("create_repository", REPO),
    ("delete_file", REPO),
    ("fork_repository", REPO),
    ("get_commit", REPO),
    ("get_file_contents", REPO),
    ("get_latest_release", REPO),
    ("get_release_by_tag", REPO),
    ("get_tag", REPO),
    ("list_branches", REPO),
    ("list_commits", REPO),
    ("list_releases", REPO),
    ("list_repository_collaborators", REPO),
    ("list_tags", REPO),
    ("push_files", REPO),
    ("search_code", REPO),
    ("search_commits", REPO),
    ("search_repositories", REPO),
    // stargazers and users
    ("list_starred_repositories", REPO),
    ("star_repository", REPO),
    ("unstar_repository", REPO),
    ("search_users", REPO),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_found_by_name_and_by_hosted_url() {
        assert_eq!(names(), "github-mcp-server");
        assert!(by_name("github-mcp-server").is_some());
        assert!(by_name("slack").is_none());
        let gh = url::Url::parse("https://api.githubcopilot.com/mcp/")
            .unwrap_or_else(|_| unreachable!());
        assert_eq!(for_url(&gh), Some("github-mcp-server"));
        let other = url::Url::parse("https://mcp.example/mcp").unwrap_or_else(|_| unreachable!());
        assert_eq!(for_url(&other), None);
    }

    #[test]
    fn the_github_map_names_each_tool_once() {
        let mut names: Vec<&str> = GITHUB_MCP_SERVER.iter().map(|(t, _)| *t).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
    }
}
