# bash completion for portman (made by portman.cmd.doc from the command specs)
_portman() {
  local cur=${COMP_WORDS[COMP_CWORD]} opts
  if [ "$COMP_CWORD" -eq 1 ]; then
    COMPREPLY=($(compgen -W "alloc probe resolve stun nat-type map unmap mappings relay run check status events register deregister repl services help --version --help" -- "$cur"))
    return
  fi
  case ${COMP_WORDS[1]} in
    help) opts="alloc probe resolve stun nat-type map unmap mappings relay run check status events register deregister repl services" ;;
    alloc) opts="--range --strategy --node-id --count --allow-privileged --proto --no-host-check --ttl --hold --etcd --cluster --timeout --cacert --cert --key --user --json --help -h" ;;
    probe) opts="--timeout --concurrency --proto --method --retries --json --no-header -H --help -h" ;;
    resolve) opts="--type --server --timeout --json --no-header -H --help -h" ;;
    stun) opts="--server --timeout --json --help -h" ;;
    nat-type) opts="--server --timeout --json --help -h" ;;
    map) opts="--external --proto --lifetime --method --timeout --gateway-url --state-dir --json --help -h" ;;
    unmap) opts="--proto --method --internal --nonce --force --timeout --gateway-url --state-dir --json --help -h" ;;
    mappings) opts="--timeout --gateway-url --state-dir --json --no-header -H --help -h" ;;
    relay) opts="--server --user --password-file --realm --proto --allow --lifetime --timeout --json --help -h" ;;
    run) opts="--state-dir --admin-socket --http --log-level --log-format --help -h" ;;
    check) opts="--no-host --json --help -h" ;;
    status) opts="--admin-socket --timeout --json --no-header -H --help -h" ;;
    events) opts="--since --admin-socket --timeout --json --no-header -H --help -h" ;;
    register) opts="--port --proto --address --type --meta --admin-socket --timeout --json --help -h" ;;
    deregister) opts="--admin-socket --timeout --json --help -h" ;;
    repl) opts="--admin-socket --timeout --help -h" ;;
    services) opts="--etcd --cluster --timeout --cacert --cert --key --user --json --no-header -H --help -h" ;;
    *) opts= ;;
  esac
  case $cur in
    -*|'') COMPREPLY=($(compgen -W "$opts" -- "$cur")) ;;
  esac
  [ ${#COMPREPLY[@]} -eq 0 ] && COMPREPLY=($(compgen -f -- "$cur"))
}
complete -F _portman portman
