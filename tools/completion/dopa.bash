# bash completion for dopa(1), dopa-manifest(1) and dopad(8).
#
# Installed three times, as completions/dopa, completions/dopa-manifest and
# completions/dopad, so that bash-completion finds it by the name of any of
# the three; it needs nothing from bash-completion itself. Job ids come from
# `dopa --json list` of the dopad being talked to; when none answers, there
# are simply no ids to offer.
#
# Kept true by tests/tools/test_man.sh: every command and long option the
# programs accept must be offered here.

# _dopa_files [-d]: paths (directories only with -d) that begin with $cur.
_dopa_files()
{
    if [[ $1 == -d ]]; then
        mapfile -t COMPREPLY < <(compgen -d -- "$cur")
    else
        mapfile -t COMPREPLY < <(compgen -f -- "$cur")
    fi
    compopt -o filenames 2>/dev/null
}

# _dopa_words WORD...: those of the words that begin with $cur.
_dopa_words()
{
    local IFS=$' \t\n'
    mapfile -t COMPREPLY < <(compgen -W "$*" -- "$cur")
}

# The ids of the caller's jobs, from the dopad the command line names
# (--socket PATH or --socket=PATH, before or after the command) or the
# default one; nothing, quickly, when none answers.
_dopa_job_ids()
{
    local prog=${COMP_WORDS[0]} i path
    local -a argv
    [[ $prog == */* && -x $prog ]] || prog=dopa
    type -P "$prog" >/dev/null 2>&1 || [[ -x $prog ]] || return 0
    argv=("$prog")
    for ((i = 1; i < COMP_CWORD; i++)); do
        [[ ${COMP_WORDS[i]} == -- ]] && break
        [[ ${COMP_WORDS[i]} == --socket ]] || continue
        path=${COMP_WORDS[i + 1]}
        [[ $path == = ]] && path=${COMP_WORDS[i + 2]}
        [[ -n $path ]] && argv+=(--socket "$path")
    done
    argv+=(--json list)
    if type -P timeout >/dev/null 2>&1; then
        argv=(timeout 2 "${argv[@]}")
    fi
    "${argv[@]}" 2>/dev/null </dev/null |
        grep -o '[[{,]"id":"[0-9a-f-]*"' 2>/dev/null | cut -d'"' -f4
}

_dopa_complete_jobs()
{
    local ids
    ids=$(_dopa_job_ids)
    _dopa_words "$ids"
}

# Sets prev and cur, also for a long option and its value joined by "="
# being typed: bash splits the words at "=", so "--manifest=" arrives as
# "--manifest" "=".
_dopa_split_equals()
{
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=${COMP_WORDS[COMP_CWORD - 1]}
    if [[ $cur == = && $prev == --* ]]; then
        cur=
    elif [[ $prev == = && ${COMP_WORDS[COMP_CWORD - 2]} == --* ]]; then
        prev=${COMP_WORDS[COMP_CWORD - 2]}
    fi
}

# _dopa_count_args FIRST TAKES_ARG...: sets nargs to the number of
# positional words from index FIRST up to the word being completed,
# skipping options and the values of the options named TAKES_ARG.
_dopa_count_args()
{
    local i=$1 w o takes
    shift
    nargs=0
    for ((; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        case $w in
        --)
            nargs=$((nargs + COMP_CWORD - i - 1))
            return
            ;;
        -*)
            takes=
            for o in "$@"; do
                [[ $w == "$o" ]] && takes=1
            done
            if [[ -n $takes ]]; then
                ((i++))
                [[ ${COMP_WORDS[i]} == = ]] && ((i++))
            elif [[ ${COMP_WORDS[i + 1]} == = ]]; then
                ((i += 2))
            fi
            ;;
        =) ;;
        *) ((nargs++)) ;;
        esac
    done
}

_dopa()
{
    local cur prev nargs i cmd='' first
    COMPREPLY=()
    _dopa_split_equals

    local commands="get create add-file resume suspend cancel complete
        take-ownership info files get-error list monitor wait set-priority
        set-name set-description set-min-retry-delay set-no-progress-timeout
        set-proxy get-proxy whoami set-notify-flags set-notify-cmdline
        get-notify validate set-validation-policy stats group-key help"

    # The options every command takes, before or after it.
    local global="--socket --json --help -h"

    # The command: the first word that is not a global option (nor the
    # path of --socket, typed as "--socket PATH" or "--socket=PATH").
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in
        --socket)
            ((i++))
            [[ ${COMP_WORDS[i]} == = ]] && ((i++))
            ;;
        -*) ;;
        *)
            cmd=${COMP_WORDS[i]}
            first=$((i + 1))
            break
            ;;
        esac
    done

    if [[ $prev == --socket ]]; then
        _dopa_files
        return
    fi
    if [[ -z $cmd ]]; then
        if [[ $cur == -* ]]; then
            _dopa_words "$global" --version
        else
            _dopa_words "$commands"
        fi
        return
    fi

    local priorities="foreground high normal low"
    local flags="transferred error modification file-transferred disable
        default none"
    case $cmd in
    get)
        case $prev in
        -o | --output | --manifest)
            _dopa_files
            return
            ;;
        --priority)
            _dopa_words "$priorities"
            return
            ;;
        --sha256 | --retry-delay | --no-progress-timeout) return ;;
        esac
        [[ $cur == -* ]] && _dopa_words -o --output --sha256 --manifest \
            --priority --retry-delay --no-progress-timeout -q --quiet "$global"
        ;;
    add-file)
        case $prev in
        --manifest)
            _dopa_files
            return
            ;;
        --range | --sha256) return ;;
        esac
        if [[ $cur == -* ]]; then
            _dopa_words --range --sha256 --manifest "$global"
            return
        fi
        _dopa_count_args "$first" --range --sha256 --manifest --socket
        case $nargs in
        0) _dopa_complete_jobs ;;
        2) _dopa_files ;;
        esac
        ;;
    resume | suspend | cancel | complete | take-ownership | info | files | \
        get-error | get-notify | get-proxy | monitor)
        if [[ $cur == -* ]]; then
            _dopa_words "$global"
            return
        fi
        _dopa_count_args "$first" --socket
        ((nargs == 0)) && _dopa_complete_jobs
        ;;
    list)
        _dopa_words --all "$global"
        ;;
    wait)
        [[ $prev == --timeout ]] && return
        if [[ $cur == -* ]]; then
            _dopa_words --timeout -q --quiet "$global"
            return
        fi
        _dopa_count_args "$first" --timeout --socket
        ((nargs == 0)) && _dopa_complete_jobs
        ;;
    set-priority | set-name | set-description | set-min-retry-delay | \
        set-no-progress-timeout | set-proxy | set-notify-flags | \
        set-notify-cmdline | validate | set-validation-policy)
        _dopa_count_args "$first" --socket
        if ((nargs == 0)); then
            if [[ $cur == -* ]]; then
                _dopa_words "$global"
            else
                _dopa_complete_jobs
            fi
            return
        fi
        case $cmd,$nargs in
        set-priority,1) _dopa_words "$priorities" ;;
        set-proxy,1) _dopa_words system none override ;;
        set-notify-flags,*) _dopa_words "$flags" ;;
        set-notify-cmdline,1)
            if [[ $cur == -* ]]; then
                _dopa_words --clear --
            else
                _dopa_files
            fi
            ;;
        set-notify-cmdline,*)
            [[ ${COMP_WORDS[first + 1]} != --clear ]] && _dopa_files
            ;;
        validate,2 | set-validation-policy,2) _dopa_words valid invalid ;;
        esac
        ;;
    group-key)
        if [[ $cur == -* ]]; then
            _dopa_words --force "$global"
        else
            _dopa_count_args "$first" --socket
            ((nargs == 0)) && _dopa_files
        fi
        ;;
    help)
        if [[ $cur == -* ]]; then
            _dopa_words "$global"
        else
            _dopa_count_args "$first" --socket
            ((nargs == 0)) && _dopa_words "$commands"
        fi
        ;;
    *)
        [[ $cur == -* ]] && _dopa_words "$global"
        ;;
    esac
}

_dopa_manifest()
{
    local cur prev nargs cmd='' first i
    COMPREPLY=()
    _dopa_split_equals

    # The command: the first word that is not an option.
    for ((i = 1; i < COMP_CWORD; i++)); do
        if [[ ${COMP_WORDS[i]} != -* ]]; then
            cmd=${COMP_WORDS[i]}
            first=$((i + 1))
            break
        fi
    done
    if [[ -z $cmd ]]; then
        if [[ $cur == -* ]]; then
            _dopa_words --json --help -h --version
        else
            _dopa_words keygen create verify show help
        fi
        return
    fi
    case $prev in
    -o | --output | -k | --key | --pubkey)
        _dopa_files
        return
        ;;
    --piece-size)
        _dopa_words 64K 128K 256K 512K 1M 2M 4M 8M 16M
        return
        ;;
    --expires)
        _dopa_words never 30d 90d 365d
        return
        ;;
    --version) return ;;
    esac
    case $cmd in
    keygen)
        _dopa_words -o --output -f --force --json --help -h
        ;;
    create)
        if [[ $cur == -* ]]; then
            _dopa_words -k --key -o --output --piece-size --version --expires --json \
                --help -h
        else
            _dopa_count_args "$first" -k --key -o --output --piece-size --version --expires
            ((nargs == 0)) && _dopa_files
        fi
        ;;
    verify)
        if [[ $cur == -* ]]; then
            _dopa_words -k --pubkey --json --help -h
        else
            _dopa_count_args "$first" -k --pubkey
            ((nargs < 2)) && _dopa_files
        fi
        ;;
    show)
        if [[ $cur == -* ]]; then
            _dopa_words -k --pubkey --pieces --json --help -h
        else
            _dopa_count_args "$first" -k --pubkey
            ((nargs == 0)) && _dopa_files
        fi
        ;;
    help)
        ((COMP_CWORD == first)) && _dopa_words keygen create verify show
        ;;
    esac
}

_dopad()
{
    local cur prev
    COMPREPLY=()
    _dopa_split_equals

    case $prev in
    --config | --socket | --trusted-key)
        _dopa_files
        return
        ;;
    --state-dir)
        _dopa_files -d
        return
        ;;
    --max-running | --inactivity-timeout) return ;;
    esac
    _dopa_words --config --socket --state-dir --max-running \
        --inactivity-timeout --trusted-key --check --help -h --version
}

complete -F _dopa dopa
complete -F _dopa_manifest dopa-manifest
complete -F _dopad dopad
