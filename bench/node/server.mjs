// Node socket.io@4 peer: the same room/echo contract as bench/peers/pysio_server.py, defaults everywhere.
// Usage: node server.mjs <port>
import { createServer } from "node:http";
import { Server } from "socket.io";

const port = Number(process.argv[2]);
const httpServer = createServer();
const io = new Server(httpServer);

io.on("connection", (socket) => {
  socket.on("join", (room, ack) => {
    socket.join(room);
    if (typeof ack === "function") ack(true);
  });
  socket.on("pub", (data, ack) => {
    io.to(data.room).emit("msg", data);
    if (typeof ack === "function") ack(true);
  });
});

httpServer.listen(port, "127.0.0.1", () => console.log(`socket.io listening on ${port}`));
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => process.exit(0));
