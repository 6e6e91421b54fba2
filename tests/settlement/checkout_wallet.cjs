// Runs the hosted checkout's script (api/static/checkout.js) the way a browser would, with an
// EIP-1193 provider that forwards to a node's JSON-RPC (anvil signs for its dev accounts).
// usage: node checkout_wallet.cjs <checkout.js> <rpc url> <account> <invoice json>
"use strict";
const fs = require("fs");
const vm = require("vm");

const [script, rpcUrl, account, invoiceJson] = process.argv.slice(2);
vm.runInThisContext(fs.readFileSync(script, "utf8"), { filename: script });

let id = 0;
const calls = [];
const provider = {
  async request({ method, params }) {
    calls.push(method);
    if (method === "eth_requestAccounts") return [account];
    const answer = await fetch(rpcUrl, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ jsonrpc: "2.0", id: ++id, method, params }),
    });
    const body = await answer.json();
    if (body.error) throw new Error(method + ": " + body.error.message);
    return body.result;
  },
};

globalThis.FollowPayCheckout.payInvoice(provider, JSON.parse(invoiceJson), (text) => console.error(text))
  .then((hash) => console.log(JSON.stringify({ hash, calls })))
  .catch((error) => {
    console.log(JSON.stringify({ error: error.message, calls }));
    process.exit(1);
  });
