//! How to set `OPENAI_API_KEY` in the user's shell, for the messages that say it is missing.
//! People who do not live in a terminal copy the line they are shown: it has to be the right
//! syntax for the shell they have.

/// The command that sets `OPENAI_API_KEY` in `shell`, the value of `$SHELL` (a path such as
/// `/usr/bin/fish`, or a bare name). When the shell is unset or not one we know (Windows sets
/// no `$SHELL`), the POSIX form comes with PowerShell's beside it.
pub fn set_key_hint(shell: Option<&str>) -> String {
    const POSIX: &str = "`export OPENAI_API_KEY=sk-proj-…`";
    const POWERSHELL: &str = "`$env:OPENAI_API_KEY = \"sk-proj-…\"`";
    let name = shell
        .map(str::trim)
        .and_then(|path| path.rsplit(['/', '\\']).next())
        .map(|name| name.strip_suffix(".exe").unwrap_or(name))
        .unwrap_or_default();
    match name {
        "fish" => "`set -x OPENAI_API_KEY sk-proj-…`".to_owned(),
        "csh" | "tcsh" => "`setenv OPENAI_API_KEY sk-proj-…`".to_owned(),
        "nu" => "`$env.OPENAI_API_KEY = \"sk-proj-…\"`".to_owned(),
        "pwsh" | "powershell" => POWERSHELL.to_owned(),
        "bash" | "zsh" | "sh" | "dash" | "ksh" | "mksh" | "ash" | "yash" => POSIX.to_owned(),
        _ => format!("{POSIX} (in PowerShell: {POWERSHELL})"),
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case(Some("/usr/bin/fish"), "`set -x OPENAI_API_KEY sk-proj-…`")]
    #[case(Some("fish"), "`set -x OPENAI_API_KEY sk-proj-…`")]
    #[case(Some("/bin/bash"), "`export OPENAI_API_KEY=sk-proj-…`")]
    #[case(Some("/bin/zsh"), "`export OPENAI_API_KEY=sk-proj-…`")]
    #[case(Some("/bin/sh"), "`export OPENAI_API_KEY=sk-proj-…`")]
    #[case(Some("/bin/tcsh"), "`setenv OPENAI_API_KEY sk-proj-…`")]
    #[case(
        Some("C:\\Program Files\\PowerShell\\7\\pwsh.exe"),
        "`$env:OPENAI_API_KEY = \"sk-proj-…\"`"
    )]
    fn each_shell_gets_its_own_syntax(#[case] shell: Option<&str>, #[case] expected: &str) {
        assert_eq!(set_key_hint(shell), expected);
    }

    #[rstest]
    #[case(None)]
    #[case(Some(""))]
    #[case(Some("/usr/local/bin/xonsh"))]
    fn an_unknown_shell_gets_posix_and_powershell(#[case] shell: Option<&str>) {
        let hint = set_key_hint(shell);
        assert!(
            hint.starts_with("`export OPENAI_API_KEY=sk-proj-…`"),
            "{hint}"
        );
        assert!(
            hint.contains("$env:OPENAI_API_KEY = \"sk-proj-…\""),
            "{hint}"
        );
    }
}
