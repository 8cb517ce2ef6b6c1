'use strict'
// A Haraka plugin for the interop tests, standing in for a mailbox store.
// RCPT: accepts every local part of the domains in config/host_list except those
// starting with `unknown_prefix`; for those it has no opinion, and as no other plugin
// accepts them, Haraka answers with its stock "550 I cannot deliver mail for <...>"
// (as it does for any domain it does not serve).
// QUEUE: keeps each message as a file the tests read, <uuid>.eml (as received, CRLF
// line ends), beside <uuid>.json (its envelope, the MAIL FROM parameters and whether
// TLS was on). The .eml is renamed into place last, so a reader
// never sees half a file.
const fs = require('node:fs')
const path = require('node:path')

exports.register = function () {
  const cfg = this.config.get('quiver_store.ini').main
  this.dir = cfg.dir
  this.unknown_prefix = cfg.unknown_prefix
  this.domains = new Set(this.config.get('host_list', 'list').map((d) => d.toLowerCase()))
  this.register_hook('mail', 'remember_params')
  this.register_hook('rcpt', 'known_user')
  this.register_hook('queue', 'store')
}

exports.known_user = function (next, connection, params) {
  const rcpt = params[0]
  const known = this.domains.has(String(rcpt.host).toLowerCase())
    && !String(rcpt.user).toLowerCase().startsWith(this.unknown_prefix)
  if (known) return next(OK)
  next()
}

exports.remember_params = function (next, connection, params) {
  connection.transaction.notes.mail_params = params[1] || {}
  next()
}

exports.store = function (next, connection) {
  const txn = connection.transaction
  const base = path.join(this.dir, txn.uuid)
  const envelope = {
    mail_from: txn.mail_from.address,
    rcpt_to: txn.rcpt_to.map((r) => r.address),
    mail_params: txn.notes.mail_params || {},
    tls: connection.tls.enabled,
    remote_ip: connection.remote.ip,
  }
  const out = fs.createWriteStream(`${base}.tmp`)
  out.on('error', (err) => next(DENYSOFT, `could not store the message: ${err.message}`))
  out.on('close', () => {
    fs.writeFileSync(`${base}.json`, JSON.stringify(envelope))
    fs.renameSync(`${base}.tmp`, `${base}.eml`)
    next(OK, `stored as ${txn.uuid}`)
  })
  // Default pipe options: CRLF line ends, SMTP dot-stuffing removed.
  txn.message_stream.pipe(out, { line_endings: '\r\n' })
}
